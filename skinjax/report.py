"""The final report: sklearn metrics, the study's classification table, plots and predictions.

Balanced accuracy (mean per-class recall, the ISIC 2018 metric) is the headline; melanoma recall
is listed first because a missed melanoma is the costliest error.
"""

import csv
import json
import pathlib

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from skinjax.data.constants import CLASS_NAMES, MELANOMA  # noqa: E402


def compute_metrics(labels: np.ndarray, probs: np.ndarray, class_names=CLASS_NAMES) -> dict:
  """Every number of the report, from labels and predicted probabilities (N, C)."""
  preds = probs.argmax(-1)
  classes = list(range(len(class_names)))
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, preds, labels=classes, zero_division=0)
  aucs = _per_class_auc(labels, probs, classes)
  present = [a for a in aucs if a is not None]
  clipped = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
  return {
      'num_examples': int(len(labels)),
      'accuracy': float(skm.accuracy_score(labels, preds)),
      'balanced_accuracy': float(skm.balanced_accuracy_score(labels, preds)),
      'macro_f1': float(skm.f1_score(labels, preds, labels=classes, average='macro', zero_division=0)),
      'weighted_f1': float(skm.f1_score(labels, preds, labels=classes, average='weighted',
                                        zero_division=0)),
      'macro_auc': float(np.mean(present)) if present else None,
      'loss': float(-np.mean(np.log(clipped))),
      'melanoma_recall': float(recall[list(class_names).index(MELANOMA)]) if MELANOMA in class_names else None,
      'per_class': {
          name: {'precision': float(precision[i]), 'recall': float(recall[i]), 'f1': float(f1[i]),
                 'support': int(support[i]), 'auc': aucs[i]}
          for i, name in _melanoma_first(class_names)},
  }


def _per_class_auc(labels, probs, classes):
  """One-vs-rest ROC-AUC per class; None where a class has no positives or no negatives."""
  aucs = []
  for c in classes:
    positives = labels == c
    aucs.append(float(skm.roc_auc_score(positives, probs[:, c]))
                if 0 < positives.sum() < len(labels) else None)
  return aucs


def _melanoma_first(class_names):
  order = sorted(range(len(class_names)), key=lambda i: (class_names[i] != MELANOMA, i))
  return [(i, class_names[i]) for i in order]


def format_summary(m: dict) -> str:
  auc = 'n/a' if m['macro_auc'] is None else f"{m['macro_auc']:.4f}"
  lines = [f"balanced_accuracy {m['balanced_accuracy']:.4f}  accuracy {m['accuracy']:.4f}  "
           f"macro_f1 {m['macro_f1']:.4f}  macro_auc {auc}  (n={m['num_examples']})",
           'per-class recall: ' + '  '.join(f"{name} {v['recall']:.3f}" for name, v in m['per_class'].items())]
  return '\n'.join(lines)


def write_report(out_dir: pathlib.Path, labels: np.ndarray, probs: np.ndarray, image_ids,
                 class_names=CLASS_NAMES, extra: dict | None = None) -> dict:
  """Writes classification_report.txt, metrics.json, confusion_matrix.png, predictions.csv."""
  out_dir.mkdir(parents=True, exist_ok=True)
  metrics = compute_metrics(labels, probs, class_names)
  metrics.update(extra or {})
  preds = probs.argmax(-1)
  classes = list(range(len(class_names)))
  table = skm.classification_report(labels, preds, labels=classes, target_names=list(class_names),
                                    digits=4, zero_division=0)
  (out_dir / 'classification_report.txt').write_text(
      table + f"\nbalanced accuracy {metrics['balanced_accuracy']:.4f}\n")
  (out_dir / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
  plot_confusion_matrix(skm.confusion_matrix(labels, preds, labels=classes), class_names,
                        out_dir / 'confusion_matrix.png')
  with open(out_dir / 'predictions.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image_id', 'label', 'pred', *[f'prob_{name}' for name in class_names]])
    for image_id, label, pred, row in zip(image_ids, labels, preds, probs):
      writer.writerow([image_id, class_names[label], class_names[pred], *[f'{p:.6f}' for p in row]])
  return metrics


def plot_confusion_matrix(matrix: np.ndarray, class_names, path: pathlib.Path):
  """Counts beside the row-normalised matrix (each row: where that true class went)."""
  rows = matrix.sum(1, keepdims=True)
  normalised = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  for ax, values, title, fmt in ((axes[0], matrix, 'counts', '{:d}'),
                                 (axes[1], normalised, 'row-normalised (recall)', '{:.2f}')):
    image = ax.imshow(values, cmap='Blues')
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=class_names, xlabel='predicted', ylabel='true',
           title=title)
    threshold = values.max() / 2 if values.size else 0
    for (i, j), v in np.ndenumerate(values):
      ax.text(j, i, fmt.format(v), ha='center', va='center', fontsize=8,
              color='white' if v > threshold else 'black')
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)

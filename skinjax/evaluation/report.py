"""The final report: sklearn metrics, the study's classification table, plots and predictions.

Balanced accuracy (mean per-class recall, the ISIC 2018 metric) is the headline; melanoma recall
is listed first because a missed melanoma is the costliest error. A melanoma-against-benign model
(ISIC 2020) also gets its AUC, the ISIC 2020 metric, and its sensitivity at 80/90/95% specificity.
Classes, the melanoma class and the challenge columns come from the dataset's description. The trainer and
scripts/evaluate.py both write their reports here, so a checkpoint evaluated later reads exactly
like the report at the end of training.
"""

import csv
import json
import pathlib

import numpy as np

from skinjax.data import datasets
from skinjax.evaluation import metrics as eval_metrics
from skinjax.evaluation import colours
from skinjax.evaluation.deferred import pyplot as plt
from skinjax.evaluation.deferred import sklearn_metrics as skm

SPECIFICITIES = (0.80, 0.90, 0.95)
# A reliability bin of fewer images than this is marked as too few to judge calibration from: at
# 10 images one wrong prediction moves its accuracy by 0.1.
SPARSE_BIN = 10


def compute_metrics(labels: np.ndarray, probs: np.ndarray,
                    description: datasets.DatasetDescription = datasets.HAM10000) -> dict:
  """Every number of the report, from labels and predicted probabilities (N, C).

  Macro figures are taken over the classes present in `labels` (metrics.present_classes); the
  others are listed in `absent_classes` and their per_class entries hold None (n/a) but their
  support of 0. Predictions into an absent class stay errors: accuracy and the recall of the
  image's true class count them.
  """
  class_names, melanoma = description.class_names, description.melanoma_index
  preds = probs.argmax(-1)
  present = eval_metrics.present_classes(labels, len(class_names))
  # labels=present: sklearn's own way to score a subset of the classes, and no warning about
  # predictions into the others.
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, preds, labels=present, zero_division=0)
  scores = {c: {'precision': float(precision[k]), 'recall': float(recall[k]), 'f1': float(f1[k]),
                'support': int(support[k])} for k, c in enumerate(present)}
  aucs = _per_class_auc(labels, probs, range(len(class_names)))
  scored_aucs = [a for a in aucs if a is not None]
  clipped = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
  not_measured = {'precision': None, 'recall': None, 'f1': None, 'support': 0}
  metrics = {
      'num_examples': int(len(labels)),
      'accuracy': float(skm.accuracy_score(labels, preds)),
      # sklearn's balanced_accuracy_score, the mean recall of the classes present.
      'balanced_accuracy': float(np.mean(recall)),
      'macro_f1': float(skm.f1_score(labels, preds, labels=present, average='macro',
                                     zero_division=0)),
      'weighted_f1': float(skm.f1_score(labels, preds, labels=present, average='weighted',
                                        zero_division=0)),
      'macro_auc': float(np.mean(scored_aucs)) if scored_aucs else None,
      'loss': float(-np.mean(np.log(clipped))),
      'melanoma_recall': scores[melanoma]['recall'] if melanoma in scores else None,
      'absent_classes': [name for i, name in enumerate(class_names) if i not in scores],
      'per_class': {name: {**scores.get(i, not_measured), 'auc': aucs[i]}
                    for i, name in _melanoma_first(description)},
  }
  if description.is_binary_melanoma:
    metrics['auc'] = aucs[melanoma]  # the ISIC 2020 metric: ROC-AUC of the melanoma probability
    metrics['sensitivity_at_specificity'] = (
        None if aucs[melanoma] is None else
        sensitivity_at_specificity(labels == melanoma, probs[:, melanoma], SPECIFICITIES))
  return metrics


def sensitivity_at_specificity(positives: np.ndarray, scores: np.ndarray, specificities) -> dict:
  """{'0.80': the highest sensitivity of any threshold whose specificity is at least 0.80, ...}.

  Read off sklearn's ROC curve, whose points are every distinct threshold.
  """
  fpr, tpr, _ = skm.roc_curve(positives, scores)
  return {f'{s:.2f}': float(tpr[fpr <= 1 - s + 1e-12].max()) for s in specificities}


def _per_class_auc(labels, probs, classes):
  """One-vs-rest ROC-AUC per class; None where a class has no positives or no negatives."""
  aucs = []
  for c in classes:
    positives = labels == c
    aucs.append(float(skm.roc_auc_score(positives, probs[:, c]))
                if 0 < positives.sum() < len(labels) else None)
  return aucs


def _melanoma_first(description: datasets.DatasetDescription):
  class_names = description.class_names
  order = sorted(range(len(class_names)), key=lambda i: (class_names[i] != description.melanoma, i))
  return [(i, class_names[i]) for i in order]


def format_summary(m: dict) -> str:
  """The headline figures and each class's recall, n/a for a class the set has no image of.

  Printed after classification_report.txt, which names the absent classes once.
  """
  auc = 'n/a' if m['macro_auc'] is None else f"{m['macro_auc']:.4f}"
  recalls = '  '.join(f"{name} {_fmt(v['recall'], 3)}" for name, v in m['per_class'].items())
  lines = [f"balanced_accuracy {m['balanced_accuracy']:.4f}  accuracy {m['accuracy']:.4f}  "
           f"macro_f1 {m['macro_f1']:.4f}  macro_auc {auc}  (n={m['num_examples']})",
           f'per-class recall: {recalls}']
  if m.get('sensitivity_at_specificity'):
    lines.append(f"melanoma AUC {_fmt(m['auc'])}; sensitivity at specificity " + ', '.join(
        f'{s}: {v:.3f}' for s, v in m['sensitivity_at_specificity'].items()))
  return '\n'.join(lines)


def absent_classes_note(absent) -> str:
  """The one line that names the classes the set has no image of."""
  return (f"no images of {', '.join(absent)}: n/a, left out of every average; predictions into "
          f"{'it' if len(absent) == 1 else 'them'} count as errors")


def _fmt(value, digits: int = 4) -> str:
  return 'n/a' if value is None else f'{value:.{digits}f}'


def format_isic_challenge(score: dict) -> str:
  """The official scorer's figure and the rows it leaves out, by name (classification_report.txt,
  which scripts/evaluate.py prints)."""
  excluded = score['excluded_images']
  left_out = (f"left out (weight 0): {', '.join(excluded)}" if excluded
              else 'no rows left out')
  return (f"isic-challenge-scoring balanced accuracy {score['balanced_accuracy']:.5f} on "
          f"{score['num_scored']} of {score['num_scored'] + len(excluded)} images; {left_out}")


def write_report(out_dir: pathlib.Path, labels: np.ndarray, probs: np.ndarray, image_ids,
                 description: datasets.DatasetDescription = datasets.HAM10000,
                 extra: dict | None = None, groups=None, bootstrap_seed: int = 0,
                 bootstrap_resamples: int = eval_metrics.BOOTSTRAP_RESAMPLES,
                 score_weights=None, figures: bool = True) -> dict:
  """Writes the report files and returns the metrics.json content.

  classification_report.txt, metrics.json (with ECE and 95% bootstrap CIs, resampled by group --
  lesion or patient -- when `groups` are given), with `figures` confusion_matrix.png, roc.png and
  reliability.png (config.eval.figures), predictions.csv and, for a dataset with a challenge,
  predictions_isic.csv in its submission format (ISIC 2018: image,MEL,...; ISIC 2019:
  image,MEL,...,UNK; ISIC 2020: image_name,target).

  `score_weights` (an ISIC ground truth's, 0 or 1 per row) add `isic_challenge` to metrics.json:
  the official scorer's balanced accuracy and the images of weight 0. Those rows are left out of
  every metric and plot, as the scorer leaves them out, and keep their rows in the predictions.
  """
  out_dir.mkdir(parents=True, exist_ok=True)
  labels, probs = np.asarray(labels), np.asarray(probs)
  class_names = description.class_names
  all_ids, all_labels, all_probs, all_groups = image_ids, labels, probs, groups
  isic_challenge = None
  if score_weights is not None:
    score_weights = np.asarray(score_weights, np.float64)
    scored = score_weights > 0
    isic_challenge = {
        'balanced_accuracy': eval_metrics.isic_balanced_accuracy(
            labels, isic_probabilities(probs), score_weights),
        'num_scored': int(scored.sum()),
        'excluded_images': [str(i) for i in np.asarray(image_ids)[~scored]],
        'rules': 'isic-challenge-scoring 5.6: score_weight column, ISIC_0035068 weight 0, '
                 'a tie for the highest probability in predictions_isic.csv counts as wrong',
    }
    labels, probs = labels[scored], probs[scored]
    groups = None if groups is None else np.asarray(groups)[scored]
  metrics = compute_metrics(labels, probs, description)
  preds = probs.argmax(-1)
  metrics['ece'] = eval_metrics.expected_calibration_error(labels, probs)
  metrics['ece_bins'] = eval_metrics.ECE_BINS
  metrics['ci'] = eval_metrics.bootstrap_intervals(
      labels, preds, len(class_names), description.melanoma_index, groups,
      num_resamples=bootstrap_resamples, seed=bootstrap_seed, unit=_unit(description),
      probs=probs)
  if isic_challenge is not None:
    metrics['isic_challenge'] = isic_challenge
  metrics.update(extra or {})
  (out_dir / 'classification_report.txt').write_text(
      classification_table(labels, preds, class_names, metrics['absent_classes'])
      + f"\nbalanced accuracy {metrics['balanced_accuracy']:.4f}\n"
      + ('' if isic_challenge is None else format_isic_challenge(isic_challenge) + '\n'))
  (out_dir / 'metrics.json').write_text(json.dumps(metrics, indent=2) + '\n')
  if figures:
    plot_confusion_matrix(skm.confusion_matrix(labels, preds, labels=range(len(class_names))),
                          class_names, out_dir / 'confusion_matrix.png')
    plot_roc(labels, probs, description, out_dir / 'roc.png')
    plot_reliability(eval_metrics.reliability_bins(labels, probs), metrics['ece'],
                     out_dir / 'reliability.png')
  # Every row, scored or not: the official scorer wants a prediction for each ground-truth row.
  with open(out_dir / 'predictions.csv', 'w', newline='') as f:
    writer = csv.writer(f)
    group_column = [] if all_groups is None else [description.group_column or 'group']
    writer.writerow(['image_id', *group_column, 'label', 'pred',
                     *[f'prob_{name}' for name in class_names]])
    for i, (image_id, label, row) in enumerate(zip(all_ids, all_labels, all_probs)):
      group = [] if all_groups is None else [all_groups[i]]
      writer.writerow([image_id, *group, class_names[label], class_names[row.argmax()],
                       *[f'{p:.6f}' for p in row]])
  if description.challenge is not None:
    write_isic_predictions(out_dir / 'predictions_isic.csv', all_ids, all_probs, description)
  return metrics


def classification_table(labels, preds, class_names, absent) -> str:
  """sklearn's classification report of the classes present, then one line naming the absent.

  An absent class gets no row of zeros, which would read as measured. With predictions into it,
  sklearn heads the averages 'micro avg' instead of 'accuracy': its recall is still the accuracy,
  its precision the share of right predictions among those into the classes present.
  """
  present = [i for i, name in enumerate(class_names) if name not in absent]
  table = skm.classification_report(labels, preds, labels=present,
                                    target_names=[class_names[i] for i in present], digits=4,
                                    zero_division=0)
  return table + ('\n' + absent_classes_note(absent) + '\n' if absent else '')


def _unit(description: datasets.DatasetDescription) -> str:
  """What the bootstrap resamples when groups are given: 'lesion' or 'patient'."""
  return {'patient_id': 'patient'}.get(description.group_key, 'lesion')


def isic_probabilities(probs: np.ndarray) -> np.ndarray:
  """The probabilities as predictions_isic.csv holds them, 8 decimals, as the scorer reads them.

  Each is the float64 nearest n / 1e8, which is also what '{:.8f}' prints and a CSV reader
  parses back, so a tie in the file is a tie here.
  """
  return np.round(np.asarray(probs, np.float64), 8)


def write_isic_predictions(path: pathlib.Path, image_ids, probs: np.ndarray,
                           description: datasets.DatasetDescription = datasets.HAM10000):
  """The dataset's challenge submission: e.g. `image,MEL,NV,BCC,AKIEC,BKL,DF,VASC` rows of
  probabilities, as isic-challenge-scoring reads them.

  Columns are mapped to classes by name, since the ISIC order differs from ours; a column no class
  predicts (ISIC 2019's UNK) holds 0. Every value is written with a decimal point: the scorer
  refuses a column that pandas would parse as integers.
  """
  challenge = description.challenge
  class_names = list(description.class_names)
  order = [None if challenge.class_of_column[column] is None
           else class_names.index(challenge.class_of_column[column]) for column in challenge.columns]
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow([challenge.image_column, *challenge.columns])
    for image_id, row in zip(image_ids, isic_probabilities(probs)):
      writer.writerow([image_id, *[f'{0.0 if i is None else row[i]:.8f}' for i in order]])


def plot_confusion_matrix(matrix: np.ndarray, class_names, path: pathlib.Path):
  _save(confusion_figure(matrix, class_names), path)


def confusion_figure(matrix: np.ndarray, class_names):
  """Counts beside the row-normalised matrix (each row: where that true class went).

  A class with no images has a blank row, its name marked '(no images)': it has no recall to show.
  Its column stays, since predictions into it are errors.
  """
  rows = matrix.sum(1, keepdims=True)
  absent = rows[:, 0] == 0
  counts = np.where(absent[:, None], np.nan, matrix)
  normalised = np.divide(matrix, rows, out=np.full(matrix.shape, np.nan), where=rows > 0)
  row_names = [f'{name} (no images)' if blank else name for name, blank in zip(class_names, absent)]
  fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
  for ax, values, title, fmt in ((axes[0], counts, 'counts', '{:.0f}'),
                                 (axes[1], normalised, 'row-normalised (recall)', '{:.2f}')):
    image = ax.imshow(np.ma.masked_invalid(values), cmap='Blues')  # masked cells stay blank
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
           xticklabels=class_names, yticklabels=row_names, xlabel='predicted', ylabel='true',
           title=title)
    threshold = np.nanmax(values, initial=0) / 2
    for (i, j), v in np.ndenumerate(values):
      if not np.isnan(v):
        ax.text(j, i, fmt.format(v), ha='center', va='center', fontsize=8,
                color='white' if v > threshold else 'black')
    fig.colorbar(image, ax=ax, fraction=0.046)
  fig.tight_layout()
  return fig


def plot_roc(labels: np.ndarray, probs: np.ndarray, description: datasets.DatasetDescription,
             path: pathlib.Path):
  _save(roc_figure(labels, probs, description), path)


def roc_figure(labels: np.ndarray, probs: np.ndarray, description: datasets.DatasetDescription):
  """One-vs-rest ROC curve per class in its fixed colour (colours.class_colours); classes without
  positives or negatives are left out."""
  colour_of = colours.class_colours(description)
  fig, ax = plt.subplots(figsize=(6.5, 6))
  for i, name in _melanoma_first(description):
    positives = labels == i
    if not 0 < positives.sum() < len(labels):
      continue
    fpr, tpr, _ = skm.roc_curve(positives, probs[:, i])
    ax.plot(fpr, tpr, color=colour_of[name], lw=2.5 if name == description.melanoma else 1.3,
            label=f'{name} (AUC {skm.auc(fpr, tpr):.3f}, n={int(positives.sum())})')
  ax.plot([0, 1], [0, 1], color='grey', lw=0.8, ls='--')
  ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel='false positive rate', ylabel='true positive rate',
         title='ROC, one class vs rest')
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  return fig


def plot_reliability(bins: dict, ece: float, path: pathlib.Path):
  _save(reliability_figure(bins, ece), path)


def reliability_figure(bins: dict, ece: float):
  """Accuracy per top-label confidence bin against the diagonal, above how many images fall in
  each bin (the number over each bar).

  A bin of fewer than SPARSE_BIN images is drawn faded and hatched, its point hollow: its accuracy
  rests on too few images to read calibration from. Empty bins are not drawn. The legend sits
  beside the plot so it hides no bin.
  """
  edges, counts = bins['edges'], bins['counts']
  centres, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges) * 0.95
  solid, sparse = counts >= SPARSE_BIN, (counts > 0) & (counts < SPARSE_BIN)
  fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, layout='constrained',
                                    gridspec_kw={'height_ratios': [3, 1]})
  sparse_look = {'alpha': 0.35, 'hatch': '//'}
  top.bar(centres[solid], bins['accuracy'][solid], width=width[solid], color='tab:blue',
          edgecolor='black', label='accuracy of the images in the bin')
  top.bar(centres[sparse], bins['accuracy'][sparse], width=width[sparse], color='tab:blue',
          edgecolor='black', **sparse_look,
          label=f'bin of fewer than {SPARSE_BIN} images:\ntoo few to judge (faded, hollow point)')
  top.plot([0, 1], [0, 1], color='grey', ls='--', label='perfect calibration')
  points = {'color': 'crimson', 'ms': 4, 'clip_on': False}  # a point at accuracy 1 stays whole
  top.plot(bins['confidence'][solid], bins['accuracy'][solid], 'o', **points,
           label='mean confidence vs accuracy\nper bin')
  top.plot(bins['confidence'][sparse], bins['accuracy'][sparse], 'o', **points,
           markerfacecolor='none')
  top.set(ylim=(0, 1), ylabel='accuracy',
          title=f'Reliability: ECE {ece:.4f}, {int(counts.sum())} images in {len(counts)} bins')
  fig.legend(*top.get_legend_handles_labels(), loc='outside right upper', fontsize=8)
  histogram = bottom.bar(centres, counts, width=width, color='grey')
  for patch, few in zip(histogram, sparse):
    if few:
      patch.set(**sparse_look)
  bottom.bar_label(histogram, labels=[str(c) if c else '' for c in counts], fontsize=7)
  bottom.set(xlim=(0, 1), ylim=(0, counts.max() * 1.25 + 1), xlabel='confidence of the top class',
             ylabel='images per bin')
  return fig


def _save(fig, path: pathlib.Path):
  fig.savefig(path, dpi=110)
  plt.close(fig)

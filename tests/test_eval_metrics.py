"""ECE and bootstrap intervals, checked against sklearn and hand-written references."""

import csv
import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from skinjax.data.constants import CLASS_NAMES, ISIC2018_COLUMNS
from skinjax.evaluation import metrics as eval_metrics
from skinjax.evaluation import report

MEL = CLASS_NAMES.index('mel')
C = len(CLASS_NAMES)


def random_predictions(n=300, seed=0, missing_class=None):
  rng = np.random.default_rng(seed)
  labels = rng.choice(C, size=n, p=[.05, .08, .12, .03, .15, .5, .07])
  if missing_class is not None:
    labels[labels == missing_class] = (missing_class + 1) % C
  logits = rng.normal(size=(n, C)) + 2.0 * np.eye(C)[labels] * rng.random((n, 1))
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return labels, probs.astype(np.float32)


def sklearn_scores(labels, preds, weights=None):
  """The report's conventions in sklearn's terms: macro figures over the classes in `labels`."""
  return {
      'balanced_accuracy': skm.balanced_accuracy_score(labels, preds, sample_weight=weights),
      'macro_f1': skm.f1_score(labels, preds, labels=np.unique(labels), average='macro',
                               zero_division=0, sample_weight=weights),
      'melanoma_recall': skm.recall_score(labels == MEL, preds == MEL, zero_division=0,
                                          sample_weight=weights),
  }


@pytest.mark.parametrize('missing_class', [None, CLASS_NAMES.index('df')])
def test_confusion_matrix_metrics_equal_sklearn(missing_class):
  """Including a class absent from the labels but predicted, where the conventions differ most."""
  labels, probs = random_predictions(missing_class=missing_class)
  preds = probs.argmax(1)
  matrix = skm.confusion_matrix(labels, preds, labels=range(C)).astype(float)
  ours = eval_metrics.metrics_from_confusion(matrix, MEL)
  assert missing_class is None or (preds == missing_class).any()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # sklearn warns about the predicted-but-absent class
    expected = sklearn_scores(labels, preds)
  for name, value in expected.items():
    assert float(ours[name]) == pytest.approx(value, abs=1e-12), name


def test_bootstrap_is_deterministic_for_a_seed():
  labels, probs = random_predictions()
  preds = probs.argmax(1)
  first = eval_metrics.bootstrap_intervals(labels, preds, C, MEL, seed=7)
  again = eval_metrics.bootstrap_intervals(labels, preds, C, MEL, seed=7)
  other = eval_metrics.bootstrap_intervals(labels, preds, C, MEL, seed=8)
  assert first == again
  assert first['balanced_accuracy'] != other['balanced_accuracy']
  assert first['resamples'] == 1000 and first['level'] == 0.95 and first['unit'] == 'image'
  for name in eval_metrics.CI_METRICS:
    low, high = first[name]
    assert 0 <= low < high <= 1


@pytest.mark.parametrize('by_lesion', [False, True])
def test_bootstrap_intervals_are_percentiles_of_sklearn_on_the_resamples(by_lesion):
  labels, probs = random_predictions(n=200, seed=1)
  preds = probs.argmax(1)
  groups = np.arange(200) // 3 if by_lesion else None  # lesions of 3 images
  ci = eval_metrics.bootstrap_intervals(labels, preds, C, MEL, groups, num_resamples=200, seed=3)
  weights = eval_metrics.resample_weights(np.arange(200) if groups is None else groups, 200, 3)
  per_resample = {name: [] for name in eval_metrics.CI_METRICS}
  for row in weights:
    chosen = np.repeat(np.arange(200), row)  # the resample as an explicit list of examples
    for name, value in sklearn_scores(labels[chosen], preds[chosen]).items():
      per_resample[name].append(value)
  assert ci['unit'] == ('lesion' if by_lesion else 'image')
  for name, values in per_resample.items():
    np.testing.assert_allclose(ci[name], np.percentile(values, [2.5, 97.5]), atol=1e-12)


def test_weighted_auc_equals_sklearn_with_sample_weight_ties_included():
  rng = np.random.default_rng(5)
  positives = rng.random(250) < 0.15
  scores = np.round(rng.random(250) + 0.3 * positives, 1)  # a few values: many ties
  weights = eval_metrics.resample_weights(np.arange(250) // 2, 40, seed=1)
  expected = [skm.roc_auc_score(positives, scores, sample_weight=w) for w in weights]
  np.testing.assert_allclose(eval_metrics.weighted_auc(positives, scores, weights), expected,
                             atol=1e-12)
  no_positive = np.where(positives, 0, 1)[None]  # a resample that drew no positive
  assert np.isnan(eval_metrics.weighted_auc(positives, scores, no_positive)).all()


def test_macro_auc_interval_is_percentiles_of_sklearn_on_the_resamples():
  labels, probs = random_predictions(n=150, seed=6, missing_class=CLASS_NAMES.index('df'))
  groups = np.arange(150) // 3
  ci = eval_metrics.bootstrap_intervals(labels, probs.argmax(1), C, MEL, groups,
                                        num_resamples=100, seed=2, probs=probs)
  per_resample = []
  for row in eval_metrics.resample_weights(groups, 100, 2):
    chosen = np.repeat(np.arange(150), row)
    # The report's macro_auc: one-vs-rest over the classes with positives and negatives.
    aucs = [skm.roc_auc_score(labels[chosen] == c, probs[chosen, c]) for c in range(C)
            if 0 < (labels[chosen] == c).sum() < len(chosen)]
    per_resample.append(np.mean(aucs))
  np.testing.assert_allclose(ci['macro_auc'], np.percentile(per_resample, [2.5, 97.5]), atol=1e-12)
  assert 'macro_auc' not in eval_metrics.bootstrap_intervals(labels, probs.argmax(1), C, MEL)


def test_lesion_resampling_draws_whole_lesions():
  groups = np.array(['a', 'a', 'b', 'c', 'c', 'c', 'd'])
  weights = eval_metrics.resample_weights(groups, 500, seed=0)
  assert weights.shape == (500, 7)
  # Images of one lesion always share their multiplicity; each resample draws 4 lesions.
  assert (weights[:, 0] == weights[:, 1]).all() and (weights[:, 3] == weights[:, 5]).all()
  lesion_draws = weights[:, [0, 2, 3, 6]]
  assert (lesion_draws.sum(1) == 4).all()
  assert abs(lesion_draws.mean() - 1.0) < 0.05  # each lesion drawn once on average


def test_ece_matches_a_hand_computed_loop():
  labels, probs = random_predictions(n=500, seed=2)
  confidence, correct = probs.max(1), probs.argmax(1) == labels
  expected = 0.0
  for low, high in zip(np.linspace(0, 1, 16)[:-1], np.linspace(0, 1, 16)[1:]):
    in_bin = (confidence > low) & (confidence <= high)
    if in_bin.any():
      expected += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  assert eval_metrics.expected_calibration_error(labels, probs) == pytest.approx(expected, abs=1e-6)


def test_ece_of_a_known_case():
  # Two confident-and-right at 0.9 and two at 0.6 of which one is right: |1-0.9|/2 + |0.5-0.6|/2.
  probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
  labels = np.array([0, 0, 0, 0])
  assert eval_metrics.expected_calibration_error(labels, probs) == pytest.approx(0.1)


def test_report_adds_calibration_intervals_and_isic_predictions(tmp_path):
  labels, probs = random_predictions(n=120, seed=4)
  ids = np.array([f'ISIC_{i:07d}' for i in range(120)])
  lesions = np.array([f'L{i // 2}' for i in range(120)])
  metrics = report.write_report(tmp_path, labels, probs, ids, groups=lesions)
  for name in ('classification_report.txt', 'metrics.json', 'confusion_matrix.png', 'roc.png',
               'reliability.png', 'predictions.csv', 'predictions_isic.csv'):
    assert (tmp_path / name).stat().st_size > 0, name
  saved = json.loads((tmp_path / 'metrics.json').read_text())
  assert saved == json.loads(json.dumps(metrics))
  assert saved['ci']['unit'] == 'lesion' and saved['ece_bins'] == 15
  assert saved['ece'] == pytest.approx(eval_metrics.expected_calibration_error(labels, probs))
  assert saved['ci'] == eval_metrics.bootstrap_intervals(labels, probs.argmax(1), C, MEL, lesions,
                                                         probs=probs)
  low, high = saved['ci']['macro_auc']
  assert low < saved['macro_auc'] < high
  with open(tmp_path / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['lesion_id'] for r in rows] == list(lesions)
  assert_isic_submission(tmp_path / 'predictions_isic.csv', ids, probs)


def assert_isic_submission(path, image_ids, probs):
  """What isic-challenge-scoring requires: exact header, every value a float in [0, 1]."""
  lines = path.read_text().splitlines()
  assert lines[0] == 'image,MEL,NV,BCC,AKIEC,BKL,DF,VASC'
  assert len(lines) == len(image_ids) + 1
  for line, image_id, row in zip(lines[1:], image_ids, probs):
    image, *values = line.split(',')
    assert image == image_id
    assert len(values) == 7 and all('.' in v for v in values)  # never parsed as integers
    floats = np.array([float(v) for v in values])
    assert ((0 <= floats) & (floats <= 1)).all()
    assert floats.sum() == pytest.approx(1.0, abs=1e-5)
    # Mapped by name: the MEL column holds our 'mel' probability, and so on.
    expected = [row[CLASS_NAMES.index(c.lower())] for c in ISIC2018_COLUMNS]
    np.testing.assert_allclose(floats, expected, atol=1e-6)  # predictions.csv has 6 decimals

"""Parity with the official ISIC scorer, isic-challenge-scoring, the independent reference.

skinjax reads an ISIC 2018 ground truth and writes predictions_isic.csv; the official package
scores the same two files through its own Python API, and the figures must agree to 1e-9. The
package (5.6) crashes with pandas 3, so the `test` extra pins pandas<3 beside it.
"""

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from skinjax.data.constants import CLASS_NAMES, ISIC2018_COLUMNS
from skinjax.evaluation import external
from skinjax.evaluation import report

DUPLICATE = 'ISIC_0035068'  # weight 0 in the official scorer, whatever the ground truth says


def official_score(truth_csv, predictions_csv):
  """isic-challenge-scoring's ClassificationScore for the two files (overall = its headline)."""
  classification = pytest.importorskip(
      'isic_challenge_scoring.classification',
      reason="the official ISIC scorer is not installed: pip install -e '.[test]' (it brings "
             "isic-challenge-scoring and pandas<3)")
  with warnings.catch_warnings():
    # Its own deprecation warnings (pandas in its CSV reader, numpy in rdp, its ROC simplifier).
    warnings.filterwarnings('ignore', 'DataFrame.applymap has been deprecated')
    warnings.filterwarnings('ignore', 'Arrays of 2-dimensional vectors are deprecated')
    return classification.ClassificationScore.from_file(
        truth_csv, predictions_csv, classification.ClassificationMetric.BALANCED_ACCURACY)


def write_truth(path, image_ids, labels, score_weights=None):
  """An ISIC 2018 Task 3 ground truth, optionally with the score_weight and validation_weight
  columns of the later ISIC challenges' files."""
  weight_columns = '' if score_weights is None else ',score_weight,validation_weight'
  lines = ['image,' + ','.join(ISIC2018_COLUMNS) + weight_columns]
  for i, (image_id, label) in enumerate(zip(image_ids, labels)):
    one_hot = ['1.0' if c.lower() == CLASS_NAMES[label] else '0.0' for c in ISIC2018_COLUMNS]
    weights = [] if score_weights is None else [f'{score_weights[i]:.1f}', '1.0']
    lines.append(','.join([image_id, *one_hot, *weights]))
  path.write_text('\n'.join(lines) + '\n')


def synthetic_set(n=400, seed=0, ties=0):
  """ISIC 2018 test ids around the duplicate, labels of every class, float32 softmax outputs.

  The duplicate is mispredicted with confidence, so leaving it out moves the figure. With `ties`,
  that many akiec rows have their two highest probabilities exactly equal.
  """
  rng = np.random.default_rng(seed)
  image_ids = [f'ISIC_{35000 + i:07d}' for i in range(n)]
  labels = rng.choice(len(CLASS_NAMES), size=n, p=[.05, .08, .12, .03, .15, .5, .07])
  logits = rng.normal(size=(n, len(CLASS_NAMES))) + 2.0 * np.eye(len(CLASS_NAMES))[labels]
  duplicate = image_ids.index(DUPLICATE)
  labels[duplicate] = CLASS_NAMES.index('df')  # a rare class, so one row weighs a lot
  logits[duplicate] = 0.0
  logits[duplicate, CLASS_NAMES.index('nv')] = 5.0
  for row in rng.choice(np.flatnonzero(np.arange(n) != duplicate), size=ties, replace=False):
    # akiec and bcc tie at the top of an akiec row: argmax's first class is right, the scorer's
    # 'undecided' is wrong.
    labels[row] = CLASS_NAMES.index('akiec')
    logits[row, :2] = logits[row].max() + 1.0
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return image_ids, labels, probs.astype(np.float32)


@pytest.mark.parametrize('weights_column, ties', [(False, 0), (True, 0), (True, 6)])
def test_reported_score_equals_the_official_scorer(tmp_path, weights_column, ties):
  image_ids, labels, probs = synthetic_set(ties=ties)
  score_weights = None
  expected_out = [DUPLICATE]
  if weights_column:
    # Rows the truth itself scores 0; the duplicate says 1 and is still left out.
    score_weights = np.ones(len(image_ids))
    score_weights[[3, 50, 51]] = 0.0
    expected_out = sorted([DUPLICATE, image_ids[3], image_ids[50], image_ids[51]])
  write_truth(tmp_path / 'truth.csv', image_ids, labels, score_weights)

  truth = external.read_labels(tmp_path / 'truth.csv')
  metrics = report.write_report(tmp_path / 'out', truth.labels, probs, truth.image_ids,
                                score_weights=truth.score_weights)
  official = official_score(tmp_path / 'truth.csv', tmp_path / 'out' / 'predictions_isic.csv')

  ours = metrics['isic_challenge']
  assert abs(ours['balanced_accuracy'] - official.overall) <= 1e-9
  assert sorted(ours['excluded_images']) == expected_out
  assert ours['num_scored'] == metrics['num_examples'] == len(image_ids) - len(expected_out)
  # The left-out rows matter: scoring every row, as skinjax did before, gives another figure.
  every_row = skm.balanced_accuracy_score(labels, probs.argmax(1))
  assert abs(every_row - official.overall) > 1e-4
  if ties:
    # A tied row is wrong for the scorer, while argmax picks the first class (right here): only
    # the isic_challenge figure follows the scorer there.
    assert ours['balanced_accuracy'] < metrics['balanced_accuracy']
  else:
    assert abs(metrics['balanced_accuracy'] - official.overall) <= 1e-9
  # The other metrics leave the same rows out: the scorer's weighted AUCs agree with ours (to
  # the 8 decimals of the submission file, which can tie two close probabilities).
  assert metrics['macro_auc'] == pytest.approx(official.macro_average['auc'], abs=1e-6)
  # The rows left out still have their predictions, which the scorer insists on.
  submission = (tmp_path / 'out' / 'predictions_isic.csv').read_text().splitlines()
  assert len(submission) == len(image_ids) + 1
  printed = (tmp_path / 'out' / 'classification_report.txt').read_text().splitlines()[-1]
  assert printed == report.format_isic_challenge(ours)
  assert printed.endswith(f"left out (weight 0): {', '.join(ours['excluded_images'])}")
  assert all(name in printed for name in expected_out)


def test_sets_without_weights_report_as_before(tmp_path):
  """HAM10000 splits and HAM-style CSVs have no weights: no isic_challenge, every row scored."""
  image_ids, labels, probs = synthetic_set(n=120)
  metrics = report.write_report(tmp_path, labels, probs, image_ids)
  assert 'isic_challenge' not in metrics and metrics['num_examples'] == 120
  assert metrics['balanced_accuracy'] == skm.balanced_accuracy_score(labels, probs.argmax(1))
  assert 'isic-challenge-scoring' not in (tmp_path / 'classification_report.txt').read_text()


def test_submission_values_are_the_ones_scored():
  """What predictions_isic.csv prints is, parsed back, exactly what the score was computed on,
  so a tie in the file is a tie in skinjax's figure."""
  probs = np.random.default_rng(1).random((2000, 7)).astype(np.float32)
  rounded = report.isic_probabilities(probs)
  parsed = np.array([[float(f'{v:.8f}') for v in row] for row in rounded])
  np.testing.assert_array_equal(parsed, rounded)
  np.testing.assert_allclose(rounded, probs, atol=5e-9 + 1e-12)


def test_a_ground_truth_out_of_order_scores_as_its_sorted_copy(tmp_path, caplog):
  """skinjax keeps each weight with its row, so the order of the file does not matter; the
  scorer sorts the rows but not the weights, and agrees only on the sorted file (as the ISIC
  ground truths are). skinjax warns about such a file."""
  image_ids, labels, probs = synthetic_set()
  order = np.random.default_rng(3).permutation(len(image_ids))
  shuffled_ids = [image_ids[i] for i in order]
  write_truth(tmp_path / 'sorted.csv', image_ids, labels)
  write_truth(tmp_path / 'shuffled.csv', shuffled_ids, labels[order])
  sorted_truth = external.read_labels(tmp_path / 'sorted.csv')
  assert 'not sorted by image' not in caplog.text
  shuffled_truth = external.read_labels(tmp_path / 'shuffled.csv')
  assert 'shuffled.csv is not sorted by image and leaves rows out' in caplog.text
  sorted_metrics = report.write_report(tmp_path / 'a', sorted_truth.labels, probs, image_ids,
                                       score_weights=sorted_truth.score_weights)
  shuffled_metrics = report.write_report(tmp_path / 'b', shuffled_truth.labels, probs[order],
                                         shuffled_ids, score_weights=shuffled_truth.score_weights)
  ours = shuffled_metrics['isic_challenge']['balanced_accuracy']
  assert ours == pytest.approx(sorted_metrics['isic_challenge']['balanced_accuracy'], abs=1e-12)
  assert abs(ours - official_score(tmp_path / 'sorted.csv', tmp_path / 'a' / 'predictions_isic.csv')
             .overall) <= 1e-9
  # The scorer's own figure for the shuffled file: the duplicate's weight 0 lands on another row
  # (if a later release sorts the weights too, this and the warning can go).
  misplaced = official_score(tmp_path / 'shuffled.csv', tmp_path / 'b' / 'predictions_isic.csv')
  assert abs(misplaced.overall - ours) > 1e-4

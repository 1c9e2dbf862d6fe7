"""Uncertainty of the report's numbers: calibration (ECE) and bootstrap confidence intervals.

A test split of a few hundred lesions gives balanced accuracy and melanoma recall wide error
bars; comparing backbones without them over-reads differences of a point or two. Images of one
lesion are not independent, so when lesion ids are known whole lesions are resampled.
"""

import warnings

import numpy as np

from skinjax.evaluation.deferred import sklearn_metrics as skm

ECE_BINS = 15
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95
# The metrics that get intervals from the predicted classes alone: each is a function of a
# (weighted) confusion matrix.
CI_METRICS = ('balanced_accuracy', 'macro_f1', 'melanoma_recall')
# The one that needs the probabilities too (bootstrap_intervals with `probs`).
AUC_CI_METRIC = 'macro_auc'


def reliability_bins(labels: np.ndarray, probs: np.ndarray, num_bins: int = ECE_BINS) -> dict:
  """Top-label confidence vs accuracy in `num_bins` equal-width bins (lo, hi], as arrays."""
  confidence = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  # side='left' on the inner edges puts a confidence equal to an edge into the lower bin.
  which = np.searchsorted(edges[1:-1], confidence, side='left')
  counts = np.bincount(which, minlength=num_bins)
  with np.errstate(invalid='ignore', divide='ignore'):
    accuracy = np.bincount(which, weights=correct, minlength=num_bins) / counts
    mean_confidence = np.bincount(which, weights=confidence, minlength=num_bins) / counts
  return {'edges': edges, 'counts': counts, 'accuracy': accuracy, 'confidence': mean_confidence}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray,
                               num_bins: int = ECE_BINS) -> float:
  """ECE (Guo et al. 2017): sum over bins of |accuracy - confidence| weighted by the bin's share."""
  bins = reliability_bins(labels, probs, num_bins)
  filled = bins['counts'] > 0
  gaps = np.abs(bins['accuracy'][filled] - bins['confidence'][filled])
  return float(np.sum(gaps * bins['counts'][filled]) / len(labels))


def resample_weights(groups, num_resamples: int, seed: int) -> np.ndarray:
  """(num_resamples, N) multiplicities: each row draws len(unique groups) groups with replacement.

  An example's weight is how often its group was drawn, so a lesion drawn twice counts all its
  images twice. Pass one group per example for the ordinary per-image bootstrap.
  """
  _, group_of = np.unique(np.asarray(groups), return_inverse=True)
  num_groups = group_of.max() + 1
  draws = np.random.default_rng(seed).integers(0, num_groups, size=(num_resamples, num_groups))
  # One bincount for all rows: offset each row's draws into its own block of num_groups.
  flat = draws + num_groups * np.arange(num_resamples)[:, None]
  counts = np.bincount(flat.ravel(), minlength=num_resamples * num_groups)
  return counts.reshape(num_resamples, num_groups)[:, group_of]


def present_classes(labels: np.ndarray, num_classes: int) -> list[int]:
  """The classes with at least one true example in `labels`: every macro figure averages these.

  A class with no images has no recall, F1 or AUC to measure (Derm7pt has no akiec); counting it
  as 0 would mark a model down for a class the set never showed it. Predictions into such a class
  still count as errors: they lower the recall of the classes the images truly belong to.
  """
  return np.flatnonzero(np.bincount(np.asarray(labels), minlength=num_classes)).tolist()


def metrics_from_confusion(matrices: np.ndarray, melanoma_index: int) -> dict[str, np.ndarray]:
  """The CI metrics of a stack of confusion matrices (..., C, C), rows true, columns predicted.

  The report's conventions (present_classes): balanced accuracy and macro-F1 average over the
  classes with support in each matrix. On the whole set that is the report's point estimate; a
  bootstrap resample that happens to lose a rare class averages the classes it still holds, the
  same statistic applied to the resample, rather than counting the lost class as an F1 of 0, which
  would drag the interval below the estimate. Melanoma recall is NaN where a matrix holds no
  melanoma (dropped from the CI).
  """
  true_positives = np.diagonal(matrices, axis1=-2, axis2=-1)
  support = matrices.sum(-1)
  predicted = matrices.sum(-2)
  present = support > 0
  with np.errstate(invalid='ignore', divide='ignore'):
    recall = true_positives / support
    f1 = 2 * true_positives / (support + predicted)  # defined wherever the class is present
  return {
      'balanced_accuracy': np.nanmean(np.where(present, recall, np.nan), axis=-1),
      'macro_f1': np.nanmean(np.where(present, f1, np.nan), axis=-1),
      'melanoma_recall': recall[..., melanoma_index],
  }


def weighted_auc(positives: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """ROC-AUC of `scores` for each row of `weights` (R, N) at once: sklearn's roc_auc_score with
  that row as sample_weight. NaN where a row weighs no positive or no negative.

  The AUC is the weighted share of (positive, negative) pairs ranked right, a tie counting half.
  Sorted by score, each positive's share is the negative weight below its score plus half that at
  its score; one cumulative sum per row gives both, so 1000 resamples cost a few array passes.
  """
  positives = np.asarray(positives, bool)
  order = np.argsort(scores, kind='stable')
  sorted_scores, positives = np.asarray(scores)[order], positives[order]
  weights = np.asarray(weights, np.float64)[:, order]
  negative_weights = weights * ~positives
  below_or_at = np.cumsum(negative_weights, axis=1)
  # Each score's run of ties: [first, last] positions in the sorted order.
  new_value = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
  first = np.maximum.accumulate(np.where(new_value, np.arange(len(order)), 0))
  last = np.r_[np.flatnonzero(new_value)[1:] - 1, len(order) - 1][np.cumsum(new_value) - 1]
  below = below_or_at[:, first] - negative_weights[:, first]
  tied = below_or_at[:, last] - below
  ranked_right = ((weights * positives) * (below + 0.5 * tied)).sum(1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return ranked_right / ((weights * positives).sum(1) * negative_weights.sum(1))


def bootstrap_intervals(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                        melanoma_index: int | None, groups=None, *,
                        num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                        level: float = CI_LEVEL, unit: str = 'lesion', probs=None) -> dict:
  """Percentile bootstrap intervals of CI_METRICS, and of macro_auc when `probs` (N, C) are
  given; resamples `groups` (lesions, or the `unit` they are) if given. Without a melanoma class,
  melanoma_recall's interval is None.

  Each resample is scored as the report scores the whole set: balanced accuracy and macro-F1 over
  the classes present in it (metrics_from_confusion), macro_auc as the mean one-vs-rest AUC over
  the classes with both positives and negatives in it.
  """
  labels, preds = np.asarray(labels), np.asarray(preds)
  unit = 'image' if groups is None else unit
  groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
  weights = resample_weights(groups, num_resamples, seed)
  cells = np.eye(num_classes * num_classes)[labels * num_classes + preds]  # (N, C*C) one-hot
  matrices = (weights @ cells).reshape(num_resamples, num_classes, num_classes)
  values = metrics_from_confusion(matrices, 0 if melanoma_index is None else melanoma_index)
  if melanoma_index is None:
    values['melanoma_recall'] = np.full(num_resamples, np.nan)
  names = CI_METRICS
  if probs is not None:
    per_class = np.stack([weighted_auc(labels == c, np.asarray(probs)[:, c], weights)
                          for c in range(num_classes)])
    with warnings.catch_warnings():  # a resample with no class scorable: NaN, dropped below
      warnings.simplefilter('ignore', RuntimeWarning)
      values[AUC_CI_METRIC] = np.nanmean(per_class, axis=0)
    names = (*CI_METRICS, AUC_CI_METRIC)
  tail = 100 * (1 - level) / 2
  intervals = {}
  for name in names:
    finite = values[name][np.isfinite(values[name])]
    intervals[name] = (None if finite.size == 0
                       else [float(v) for v in np.percentile(finite, [tail, 100 - tail])])
  return {'level': level, 'resamples': num_resamples, 'seed': seed, 'unit': unit, **intervals}


def isic_balanced_accuracy(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> float:
  """The ISIC 2018 Task 3 score as isic-challenge-scoring 5.6 computes it.

  Its metrics.balanced_multiclass_accuracy: the mean over the classes with weight in the ground
  truth of (weighted true positives) / (weighted support), the weights being the ground truth's
  score_weight. It labels a prediction by its highest probability but calls a row whose highest
  value is shared by two classes 'undecided', which counts as wrong; here such a row gets the
  class -1. Pass `probs` as the submission file holds them (report.isic_probabilities), since
  rounding can make or break a tie.
  """
  probs = np.asarray(probs)
  tied = (probs == probs.max(-1, keepdims=True)).sum(-1) > 1
  preds = np.where(tied, -1, probs.argmax(-1))
  with warnings.catch_warnings():
    # Expected here: -1, and classes present only in rows of weight 0, have no support and are
    # left out of the mean, as the scorer leaves out their NaN.
    warnings.filterwarnings('ignore', message='y_pred contains classes not in y_true')
    return float(skm.balanced_accuracy_score(labels, preds, sample_weight=weights))

"""The report on a set that lacks a class (Derm7pt has no akiec), and plots a reader can trust.

References are sklearn with `labels=` the classes present, and the matplotlib artists the plots
draw.
"""

import json
import warnings

import numpy as np
import pytest
from matplotlib import colors as mcolors
from matplotlib import pyplot as plt
from sklearn import metrics as skm

from skinjax.data import datasets
from skinjax.evaluation import colours
from skinjax.evaluation import metrics as eval_metrics
from skinjax.evaluation import report

NAMES = datasets.HAM10000.class_names
AKIEC, MEL = NAMES.index('akiec'), NAMES.index('mel')
ISIC2020 = datasets.DatasetDescription('isic2020', 'isic2020', ('benign', 'melanoma'), 'melanoma',
                                       'patient_id')


def predictions(n=240, seed=0, absent=(AKIEC,)):
  """Labels without the `absent` classes (Derm7pt-like proportions) and softmax outputs, some
  of whose top class is an absent one: errors that must stay errors."""
  rng = np.random.default_rng(seed)
  share = np.array([0, 13, 21, 6, 76, 172, 9], float)  # Derm7pt's counts; akiec has none
  share[list(absent)] = 0
  share[AKIEC] = 0 if AKIEC in absent else 10
  labels = rng.choice(len(NAMES), size=n, p=share / share.sum())
  logits = rng.normal(size=(n, len(NAMES))) + 1.5 * np.eye(len(NAMES))[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  return labels, probs


@pytest.fixture(scope='module')
def derm7pt_like_report(tmp_path_factory):
  out = tmp_path_factory.mktemp('report')
  labels, probs = predictions()
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # no sklearn warning about the absent class reaches the user
    metrics = report.write_report(out, labels, probs, [f'img{i}' for i in range(len(labels))],
                                  bootstrap_resamples=100)
  return out, labels, probs, metrics


def test_macro_figures_are_sklearns_over_the_classes_present(derm7pt_like_report):
  _, labels, probs, metrics = derm7pt_like_report
  preds = probs.argmax(1)
  present = [c for c in range(len(NAMES)) if c != AKIEC]
  assert (preds == AKIEC).any(), 'the set must predict into the absent class'
  assert metrics['absent_classes'] == ['akiec']
  assert metrics['macro_f1'] == pytest.approx(
      skm.f1_score(labels, preds, labels=present, average='macro'), abs=1e-12)
  assert metrics['weighted_f1'] == pytest.approx(
      skm.f1_score(labels, preds, labels=present, average='weighted'), abs=1e-12)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # sklearn's warning about predictions into akiec
    assert metrics['balanced_accuracy'] == pytest.approx(
        skm.balanced_accuracy_score(labels, preds), abs=1e-12)
  # Predictions into akiec stay errors.
  assert metrics['accuracy'] == pytest.approx(np.mean(preds == labels))
  assert metrics['macro_auc'] == pytest.approx(
      np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present]), abs=1e-12)
  precision, recall, f1, support = skm.precision_recall_fscore_support(labels, preds,
                                                                       labels=present)
  for k, c in enumerate(present):
    assert metrics['per_class'][NAMES[c]] == pytest.approx(
        {'precision': precision[k], 'recall': recall[k], 'f1': f1[k], 'support': support[k],
         'auc': skm.roc_auc_score(labels == c, probs[:, c])}, abs=1e-12)


def test_an_absent_class_is_n_a_everywhere(derm7pt_like_report):
  out, labels, probs, metrics = derm7pt_like_report
  not_measured = {'precision': None, 'recall': None, 'f1': None, 'support': 0, 'auc': None}
  saved = json.loads((out / 'metrics.json').read_text())
  assert saved['per_class']['akiec'] == metrics['per_class']['akiec'] == not_measured
  assert saved['absent_classes'] == ['akiec']
  assert 'akiec n/a' in report.format_summary(metrics)
  table = (out / 'classification_report.txt').read_text()
  akiec_lines = [line for line in table.splitlines() if 'akiec' in line]
  assert len(akiec_lines) == 1 and 'no images of akiec' in akiec_lines[0]
  present = [c for c in range(len(NAMES)) if c != AKIEC]
  assert table.startswith(skm.classification_report(
      labels, probs.argmax(1), labels=present, target_names=[NAMES[c] for c in present],
      digits=4, zero_division=0))


def test_intervals_take_the_classes_present_in_each_resample(derm7pt_like_report):
  _, labels, probs, metrics = derm7pt_like_report
  preds = probs.argmax(1)
  full = skm.confusion_matrix(labels, preds, labels=range(len(NAMES))).astype(float)
  point = eval_metrics.metrics_from_confusion(full, MEL)
  assert float(point['macro_f1']) == pytest.approx(metrics['macro_f1'], abs=1e-12)
  assert float(point['balanced_accuracy']) == pytest.approx(metrics['balanced_accuracy'],
                                                            abs=1e-12)
  per_resample = []
  for row in eval_metrics.resample_weights(np.arange(len(labels)), 100, seed=0):
    chosen = np.repeat(np.arange(len(labels)), row)
    per_resample.append(skm.f1_score(labels[chosen], preds[chosen],
                                     labels=np.unique(labels[chosen]), average='macro'))
  np.testing.assert_allclose(metrics['ci']['macro_f1'], np.percentile(per_resample, [2.5, 97.5]),
                             atol=1e-12)


def test_without_melanoma_images_melanoma_recall_is_n_a():
  labels, probs = predictions(n=120, seed=1, absent=(AKIEC, MEL))
  metrics = report.compute_metrics(labels, probs)
  assert metrics['melanoma_recall'] is None and metrics['absent_classes'] == ['akiec', 'mel']
  ci = eval_metrics.bootstrap_intervals(labels, probs.argmax(1), len(NAMES), MEL,
                                        num_resamples=50)
  assert ci['melanoma_recall'] is None
  assert 'mel n/a' in report.format_summary(metrics)


def test_confusion_matrix_blanks_the_absent_row_and_keeps_its_column(derm7pt_like_report):
  _, labels, probs, _ = derm7pt_like_report
  preds = probs.argmax(1)
  matrix = skm.confusion_matrix(labels, preds, labels=range(len(NAMES)))
  fig = report.confusion_figure(matrix, NAMES)
  try:
    for ax in fig.axes[:2]:
      drawn = ax.images[0].get_array()
      assert drawn.mask[AKIEC].all() and not drawn.mask[AKIEC + 1:].any()
      assert ax.get_yticklabels()[AKIEC].get_text() == 'akiec (no images)'
      numbers = {(round(t.get_position()[1]), round(t.get_position()[0])) for t in ax.texts}
      assert not any(row == AKIEC for row, _ in numbers)
      assert len(numbers) == (len(NAMES) - 1) * len(NAMES)
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array()[:, AKIEC][AKIEC + 1:],
                                  matrix[AKIEC + 1:, AKIEC])  # the errors into akiec
  finally:
    plt.close(fig)


def test_reliability_plot_shows_counts_and_marks_bins_of_few_images():
  # Known bins: 20 images at confidence 0.9 (half right), 4 at 0.5, 1 at 0.3; 15 bins.
  confidence = np.r_[np.full(20, 0.9), np.full(4, 0.5), 0.3]
  probs = np.stack([confidence, 1 - confidence], 1)
  labels = np.r_[np.tile([0, 1], 10), np.zeros(5, int)]
  bins = eval_metrics.reliability_bins(labels, probs)
  expected = np.zeros(15, int)
  # 0.9 in (0.867, 0.933], 0.5 in (0.467, 0.533] and the top class of the 0.3 row, 0.7, in
  # (0.667, 0.733].
  expected[[13, 7, 10]] = 20, 4, 1
  np.testing.assert_array_equal(bins['counts'], expected)
  fig = report.reliability_figure(bins, ece=0.1)
  try:
    top, bottom = fig.axes
    histogram = bottom.containers[0]
    np.testing.assert_array_equal(histogram.datavalues, expected)
    assert [t.get_text() for t in bottom.texts] == [str(c) if c else '' for c in expected]
    accuracy_bars = [p for c in top.containers for p in c]
    hatched = sorted(round(p.get_x() + p.get_width() / 2, 3) for p in accuracy_bars
                     if p.get_hatch())
    assert hatched == [round((k + 0.5) / 15, 3) for k in (7, 10)]  # the bins under SPARSE_BIN
    assert [p.get_hatch() for p in histogram if p.get_hatch()] == ['//', '//']
    legend = fig.legends[0]
    assert top.get_legend() is None
    texts = ' '.join(t.get_text() for t in legend.get_texts())
    assert 'mean confidence vs accuracy' in texts and f'fewer than {report.SPARSE_BIN}' in texts
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(top.get_window_extent())
  finally:
    plt.close(fig)


def roc_colours(labels, probs, description):
  fig = report.roc_figure(labels, probs, description)
  try:
    return {line.get_label().split(' ')[0]: mcolors.to_hex(line.get_color())
            for line in fig.axes[0].lines if '(AUC' in line.get_label()}
  finally:
    plt.close(fig)


def test_a_class_keeps_its_colour_when_another_is_absent():
  full = roc_colours(*predictions(seed=2, absent=()), datasets.HAM10000)
  without_akiec = roc_colours(*predictions(seed=3), datasets.HAM10000)
  assert set(full) == set(NAMES) and set(without_akiec) == set(NAMES) - {'akiec'}
  assert without_akiec == {name: full[name] for name in without_akiec}
  assert len(set(full.values())) == len(NAMES)
  melanoma_red = mcolors.to_hex(colours.MELANOMA_COLOUR)
  assert full['mel'] == melanoma_red
  labels = np.r_[np.zeros(30, int), np.ones(10, int)]
  binary = np.random.default_rng(4).dirichlet([1, 1], 40)
  assert roc_colours(labels, binary, ISIC2020)['melanoma'] == melanoma_red

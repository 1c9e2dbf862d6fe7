"""Lesion-grouped k-fold splits (config.data.folds), ensembles of runs (evaluate.py --workdir=A,B)
and scripts/cross_validate.py, which trains the folds and scores them one by one and together."""

import csv
import json
import os
import pathlib
import shutil

import numpy as np
import pytest

from skinjax.data import handle
from skinjax.data import splits as splits_lib
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import ensemble
from skinjax.evaluation import inference
from skinjax.runtime import saved_config
from skinjax.training import config_checks
from skinjax.training import train
from tests.helpers import REPO, tiny_config
from tests.test_evaluation_scripts import read_predictions
from tests.test_external import write_isic_csv, write_jpegs

HAM10000_DIR = os.environ.get('SKINJAX_HAM10000_DIR')


def lesions_like_ham10000(seed=0):
  """~1,300 images of 7 classes, as unbalanced as HAM10000, in lesions of 1-6 images."""
  rng = np.random.default_rng(seed)
  labels, groups = [], []
  for label, lesions in enumerate((90, 600, 40, 25, 80, 10, 12)):
    for lesion in range(lesions):
      size = 1 + rng.poisson(0.5) if rng.random() < 0.9 else rng.integers(3, 7)
      labels += [label] * size
      groups += [f'L{label}_{lesion}'] * size
  return np.array(labels), np.array(groups)


def ham10000_lesions():
  if not HAM10000_DIR:
    pytest.skip('set SKINJAX_HAM10000_DIR to the HAM10000 Kaggle folder (.ci/run sets it)')
  with open(pathlib.Path(HAM10000_DIR) / 'HAM10000_metadata.csv') as f:
    rows = list(csv.DictReader(f))
  return (np.array([CLASS_NAMES.index(r['dx']) for r in rows]),
          np.array([r['lesion_id'] for r in rows]))


@pytest.mark.parametrize('lesions', [lesions_like_ham10000, ham10000_lesions],
                         ids=['synthetic', 'ham10000'])
@pytest.mark.parametrize('folds', [3, 5])
def test_folds_keep_the_test_split_and_deal_train_and_val_by_lesion_and_class(lesions, folds):
  labels, groups = lesions()
  base = splits_lib.make_splits(labels, groups)
  pool = np.union1d(base['train'], base['val'])
  vals = []
  for fold in range(folds):
    split = splits_lib.fold_splits(base, labels, groups, folds, fold)
    np.testing.assert_array_equal(split['test'], base['test'])
    np.testing.assert_array_equal(np.union1d(split['train'], split['val']), pool)
    assert not np.intersect1d(split['train'], split['val']).size
    assert splits_lib.leak_report(split, groups)['shared_lesions_total'] == 0
    vals.append(split['val'])
    # Stratified: each class's share of the fold is its share of train + val, within the
    # largest lesion of that class (the dealer moves whole lesions).
    for label in np.unique(labels[pool]):
      in_pool = np.sum(labels[pool] == label)
      largest = np.max(np.unique(groups[pool][labels[pool] == label], return_counts=True)[1])
      assert abs(np.sum(labels[split['val']] == label) - in_pool / folds) <= largest, label
  # The validation folds partition train + val, and no lesion validates twice.
  np.testing.assert_array_equal(np.sort(np.concatenate(vals)), pool)
  lesions_per_fold = [set(groups[v]) for v in vals]
  assert sum(map(len, lesions_per_fold)) == len(set().union(*lesions_per_fold))


def test_a_class_with_fewer_lesions_than_folds_is_named():
  labels, groups = lesions_like_ham10000()
  base = splits_lib.make_splits(labels, groups)
  pool = np.union1d(base['train'], base['val'])
  lesions = {c: len(set(groups[pool][labels[pool] == c])) for c in range(len(CLASS_NAMES))}
  rarest = min(lesions, key=lesions.get)
  assert sorted(lesions.values())[1] > lesions[rarest] + 1  # only the rarest is short below
  with pytest.raises(splits_lib.FoldError, match=(
      rf'folds=\d+: these classes have fewer lesions in train and val than folds: '
      rf'{CLASS_NAMES[rarest]} \({lesions[rarest]}\), so some fold would validate without them')):
    splits_lib.fold_splits(base, labels, groups, lesions[rarest] + 1, 0, class_names=CLASS_NAMES)
  split = splits_lib.fold_splits(base, labels, groups, lesions[rarest], 0, class_names=CLASS_NAMES)
  assert set(labels[split['val']]) == set(range(len(CLASS_NAMES)))


@pytest.mark.parametrize('folds, fold, message', [
    (1, 0, r'config.data.folds=1: use 2 or more folds'),
    (-2, 0, r'config.data.folds=-2: use 2 or more folds'),
    (3, 3, r'config.data.fold=3 is not a fold of 3: use 0 to 2'),
    (3, -1, r'config.data.fold=-1 is not a fold of 3'),
    (0, 2, r'config.data.fold=2 without config.data.folds'),
])
def test_fold_settings_are_checked_before_anything_runs(folds, fold, message):
  with pytest.raises(ValueError, match=message):
    config_checks.validate(tiny_config(**{'data.folds': folds, 'data.fold': fold}))


def test_the_trainer_splits_by_the_configured_fold():
  plain = handle.PreparedDataset.open(tiny_config())
  metadata = plain.metadata
  for fold in range(3):
    dataset = handle.PreparedDataset.open(tiny_config(**{'data.folds': 3, 'data.fold': fold}))
    expected = splits_lib.fold_splits(plain.splits, metadata['label'], metadata['group'], 3, fold)
    for name in splits_lib.SPLIT_NAMES:
      np.testing.assert_array_equal(dataset.splits[name], expected[name])
  # Runs saved before folds existed read as one train/val split.
  upgraded = saved_config.upgrade({'data': {}})['data']
  assert (upgraded['folds'], upgraded['fold']) == (0, 0)


def test_a_fold_too_many_for_the_data_stops_the_cli_in_one_line(tmp_path, python):
  workdir = tmp_path / 'run'
  result = python.run(['-m', 'skinjax.main', '--config=configs/demo.py', f'--workdir={workdir}',
                       '--config.data.synthetic_examples=240', '--config.data.folds=40',
                       '--config.data.fold=1'])
  assert result.returncode == 1, result.stderr
  assert result.stderr.strip().splitlines() == [
      'error: config.data.folds=40: these classes have fewer lesions in train and val than '
      'folds: ' + result.stderr.split('folds: ', 1)[1].split(', so')[0]
      + ', so some fold would validate without them; use fewer folds.']
  assert not workdir.exists()


# ------------------------------------------------------------------ ensembles


@pytest.fixture(scope='module')
def members(tiny_run, tmp_path_factory):
  """The shared tiny run and a second one, shorter and at another image size: two different
  models of the same data, each with its own evaluation pipeline."""
  root = tmp_path_factory.mktemp('members')
  first = shutil.copytree(tiny_run[0], root / 'a')
  train.train_and_evaluate(tiny_config(**{'train.num_epochs': 1, 'data.image_size': 32}),
                           str(root / 'b'))
  return first, root / 'b'


@pytest.fixture(scope='module')
def isic_set(tmp_path_factory):
  folder = tmp_path_factory.mktemp('external')
  ids = [f'ISIC_{i:07d}' for i in range(14)]
  write_jpegs(folder / 'images', ids, seed=7)
  write_isic_csv(folder / 'truth.csv', ids, [CLASS_NAMES[i % 7] for i in range(14)])
  return folder


@pytest.mark.parametrize('where', ['test', 'external'])
def test_ensemble_probabilities_are_the_members_mean(members, isic_set, where, python):
  args = (['--split=test'] if where == 'test' else
          [f'--images_dir={isic_set / "images"}', f'--labels_csv={isic_set / "truth.csv"}'])
  result = python.run([REPO / 'scripts' / 'evaluate.py', f'--workdir={members[0]},{members[1]}',
                       '--tta=flip', *args])
  assert result.returncode == 0, result.stderr
  [out] = (ensemble.default_workdir(members) / 'eval').glob(
      'test-best-tta_flip' if where == 'test' else 'external-*-best-tta_flip')
  assert ensemble.default_workdir(members).name == 'ensemble-a+b'
  _, labels, probs = read_predictions(out / 'predictions.csv')
  # By hand: each member on its own, then the mean.
  runs = [inference.load_run(m, 'best') for m in members]
  data = (checkpoint_eval.run_split(runs[0], 'test') if where == 'test' else
          checkpoint_eval.external_set(isic_set / 'images', isic_set / 'truth.csv', runs[0]))
  each = [run.predict(data.source, data.indices, tta_mode='flip') for run in runs]
  assert np.abs(each[0] - each[1]).max() > 0.01, 'the members must differ'
  np.testing.assert_allclose(probs, (each[0] + each[1]) / 2, atol=2e-6)
  np.testing.assert_array_equal(labels, data.labels)
  metrics = json.loads((out / 'metrics.json').read_text())
  assert [m['workdir'] for m in metrics['members']] == [str(m) for m in members]
  assert metrics['num_params'] == sum(run.num_params for run in runs)
  if where == 'external':
    with open(out / 'predictions_isic.csv') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == 14


def with_description(source, destination, **changes):
  """A copy of a run whose config.json describes its dataset otherwise."""
  shutil.copytree(source, destination)
  config = json.loads((destination / 'config.json').read_text())
  for key, value in changes.items():
    if key == 'config':
      config.update(value)
    else:
      config['dataset_description'][key] = value
  (destination / 'config.json').write_text(json.dumps(config))
  return destination


def test_ensembles_that_cannot_be_averaged_are_refused_by_name(members, tmp_path, python):
  first = members[0]
  renamed = with_description(first, tmp_path / 'renamed',
                             class_names=['mel', 'nv', 'bcc', 'ak', 'bkl', 'df', 'vasc'])
  other_data = with_description(first, tmp_path / 'other_data', name='isic2019_like')
  folded = with_description(first, tmp_path / 'folded', config={
      'data': {**json.loads((first / 'config.json').read_text())['data'], 'folds': 3, 'fold': 0}})
  cases = [
      ([first, renamed], [], f'error: {renamed} predicts mel, nv, bcc, ak, bkl, df, vasc, but '
                             f'{first} predicts'),
      ([first, other_data], [], f'error: {other_data} was trained on isic2019_like, but {first}'),
      ([first, folded], ['--split=val'], f'error: {folded} and {first} have different val splits'),
      ([first, first], [], f'error: --workdir names {first} more than once'),
      ([first, ''], [], f'error: --workdir={first}, has an empty name'),
  ]
  for workdirs, args, message in cases:
    result = python.run([REPO / 'scripts' / 'evaluate.py',
                         '--workdir=' + ','.join(map(str, workdirs)), *args])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith(message), (message, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1
    assert not ensemble.default_workdir([w for w in workdirs if str(w)]).exists()
  # The folds share their test split: that ensemble is scored.
  result = python.run([REPO / 'scripts' / 'evaluate.py', f'--workdir={first},{folded}'])
  assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------ cross_validate.py


def test_cross_validate_trains_scores_and_resumes(tmp_path, python):
  out = tmp_path / 'cv'
  args = [REPO / 'scripts' / 'cross_validate.py', '--config=configs/demo.py', '--folds=2',
          f'--out={out}', '--override=data.synthetic_examples=240', '--override=data.image_size=24',
          '--override=train.num_epochs=1', '--override=train.batch_size=16',
          '--override=eval.figures=false']
  result = python.run(args)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  for fold in range(2):
    config = json.loads((out / f'fold_{fold}' / 'config.json').read_text())
    assert (config['data']['folds'], config['data']['fold']) == (2, fold)
  # Each fold validated on its own half of train + val.
  vals = [handle.PreparedDataset.open(tiny_config(**{'data.folds': 2, 'data.fold': f})).splits['val']
          for f in range(2)]
  assert not np.intersect1d(*vals).size
  summary = json.loads((out / 'folds.json').read_text())['the test split']
  scores = [json.loads((out / f'fold_{f}' / 'report' / 'metrics.json').read_text())
            ['balanced_accuracy'] for f in range(2)]
  assert [row['balanced_accuracy'] for row in summary['folds']] == scores
  mean, sd = summary['mean_sd']['balanced_accuracy']
  assert mean == pytest.approx(np.mean(scores)) and sd == pytest.approx(np.std(scores, ddof=1))
  together = json.loads((out / 'ensemble-fold_0+fold_1' / 'eval' / 'test-best' / 'metrics.json')
                        .read_text())
  assert summary['ensemble']['balanced_accuracy'] == together['balanced_accuracy']
  table = (out / 'folds.md').read_text()
  assert '| fold_0 |' in table and '| mean ± sd of the folds |' in table
  assert '| ensemble of the 2 folds |' in table
  # Again: nothing trains or scores twice.
  again = python.run(args)
  assert again.returncode == 0, again.stderr
  assert again.stdout.count('finished before; skipping.') == 2
  assert 'scoring' not in again.stdout and 'training in' not in again.stdout


@pytest.mark.parametrize('args, message', [
    (['--folds=1'], 'error: --folds=1: use 2 or more folds.'),
    (['--override=data.fold=1'], 'error: --override of data.folds or data.fold: this script sets '
                                 'them; give --folds instead.'),
    (['--images_dir=/nowhere', '--labels_csv=/nowhere.csv'],
     'error: --images_dir=/nowhere: no such folder; give the folder of the external images.'),
    (['--override=train.num_epoch=2'], 'error: unknown config key train.num_epoch (did you mean'),
])
def test_cross_validate_refuses_bad_flags_before_training(args, message, tmp_path, python):
  out = tmp_path / 'cv'
  result = python.run([REPO / 'scripts' / 'cross_validate.py', '--config=configs/demo.py',
                       f'--out={out}', *args])
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert not out.exists()

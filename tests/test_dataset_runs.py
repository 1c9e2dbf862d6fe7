"""A run per class structure, as a user would make it: an 8-class ISIC-2019-shaped download and a
binary ISIC-2020-shaped one, each through prepare_dataset.py, skinjax.main, evaluate.py (its test
split and an external set in the challenge's own ground-truth format), predict.py and compare.py.
"""

import csv
import json
import os
import pathlib

import numpy as np
import pytest
from sklearn import metrics as skm

from skinjax.evaluation import report
from tests import dataset_fixtures as fx
from tests.helpers import FAST_COMPILE

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT_SIDE = 32
TRAIN_FLAGS = ('--config=configs/demo.py', '--config.data.source=prepared',
               f'--config.data.prepared_size={SHORT_SIDE}', '--config.data.image_size=24',
               '--config.train.batch_size=16', '--config.train.eval_batch_size=32',
               '--config.train.num_epochs=1', '--config.train.log_every_steps=1',
               '--config.eval.figures=false')
CASES = {
    # name: (fixture writer, the external ground truth inside a second download, classes)
    'isic2019': (fx.write_isic2019, 'ISIC_2019_Training_GroundTruth.csv',
                 ('mel', 'nv', 'bcc', 'ak', 'bkl', 'df', 'vasc', 'scc')),
    'isic2020': (fx.write_isic2020, 'train.csv', ('benign', 'melanoma')),
}


def run(python, args):
  # These runs check the class structure through each tool, not the numbers: every tool alike
  # compiles the new 8- and 2-class programs at FAST_COMPILE.
  result = python.run(args, env=dict(os.environ, XLA_FLAGS=FAST_COMPILE))
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def rows_of(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module', params=list(CASES))
def trained(request, tmp_path_factory, python):
  name = request.param
  writer, _, _ = CASES[name]
  root = tmp_path_factory.mktemp(name)
  writer(root / 'download')
  writer(root / 'external', seed=1)  # other images, the same ground-truth format
  data_dir = root / 'tfds'
  run(python, [REPO / 'scripts' / 'prepare_dataset.py', f'--format={name}',
       f'--manual_dir={root / "download"}', f'--data_dir={data_dir}', f'--image_size={SHORT_SIDE}'])
  workdir = root / 'run'
  run(python, ['-m', 'skinjax.main', *TRAIN_FLAGS, f'--config.data.dataset={name}',
       f'--config.data.data_dir={data_dir}', f'--workdir={workdir}'])
  return name, root, workdir


def test_training_reads_the_classes_from_the_dataset(trained):
  name, _, workdir = trained
  classes = CASES[name][2]
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['dataset_description']['class_names'] == list(classes)
  assert saved['dataset']['name'] == name and saved['data']['dataset'] == name
  metrics = json.loads((workdir / 'report' / 'metrics.json').read_text())
  assert list(metrics['per_class'])[0] == ('mel' if name == 'isic2019' else 'melanoma')
  assert set(metrics['per_class']) == set(classes)
  predictions = rows_of(workdir / 'report' / 'predictions.csv')
  assert [k for k in predictions[0] if k.startswith('prob_')] == [f'prob_{c}' for c in classes]
  group_column = 'lesion_id' if name == 'isic2019' else 'patient_id'
  assert group_column in predictions[0]
  assert metrics['ci']['unit'] == group_column.removesuffix('_id')
  submission = rows_of(workdir / 'report' / 'predictions_isic.csv')
  if name == 'isic2019':
    assert list(submission[0]) == ['image', *fx.ISIC2019_COLUMNS]
    assert {r['UNK'] for r in submission} == {'0.00000000'}
  else:
    assert list(submission[0]) == ['image_name', 'target']
    labels = np.array([r['label'] == 'melanoma' for r in predictions])
    melanoma = np.array([float(r['prob_melanoma']) for r in predictions])
    assert metrics['auc'] == pytest.approx(skm.roc_auc_score(labels, melanoma), abs=1e-5)
    assert set(metrics['sensitivity_at_specificity']) == {'0.80', '0.90', '0.95'}


def test_evaluate_an_external_set_in_the_challenge_format(trained, python):
  name, root, workdir = trained
  truth_name, classes = CASES[name][1], CASES[name][2]
  external = root / 'external'
  truth = next(external.rglob(truth_name))
  out = root / 'eval_external'
  result = run(python, [REPO / 'scripts' / 'evaluate.py', f'--workdir={workdir}',
                f'--images_dir={external}', f'--labels_csv={truth}', f'--out={out}'])
  metrics = json.loads((out / 'metrics.json').read_text())
  truth_rows = rows_of(truth)
  assert metrics['num_examples'] == len(truth_rows)
  predictions = rows_of(out / 'predictions.csv')
  if name == 'isic2019':
    # An ISIC 2019 model scores SCC, which a HAM10000 model would have to refuse.
    assert metrics['labels_format'] == 'isic2019' and metrics['per_class']['scc']['support'] > 0
    expected = [next(c for c in fx.ISIC2019_COLUMNS if r[c] == '1.0').lower() for r in truth_rows]
  else:
    assert metrics['labels_format'] == 'isic2020'
    expected = ['melanoma' if r['target'] == '1' else 'benign' for r in truth_rows]
    probs = np.array([float(r['prob_melanoma']) for r in predictions])
    positives = np.array(expected) == 'melanoma'
    assert metrics['auc'] == pytest.approx(skm.roc_auc_score(positives, probs), abs=1e-5)
    assert metrics['sensitivity_at_specificity'] == pytest.approx(
        report.sensitivity_at_specificity(positives, probs, (0.8, 0.9, 0.95)), abs=1e-5)
    assert 'sensitivity at specificity 0.80' in result.stdout
  assert [r['label'] for r in predictions] == expected
  labels = np.array([classes.index(e) for e in expected])
  preds = np.array([classes.index(r['pred']) for r in predictions])
  assert metrics['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))


def test_evaluate_its_test_split_predict_and_compare(trained, python):
  name, root, workdir = trained
  classes = CASES[name][2]
  run(python, [REPO / 'scripts' / 'evaluate.py', f'--workdir={workdir}'])
  evaluated = json.loads((workdir / 'eval' / 'test-best' / 'metrics.json').read_text())
  reported = json.loads((workdir / 'report' / 'metrics.json').read_text())
  assert evaluated['balanced_accuracy'] == pytest.approx(reported['balanced_accuracy'])
  assert evaluated['dataset'] == name
  images = sorted((root / 'external').rglob('*.jpg'))[:2]
  result = run(python, [REPO / 'scripts' / 'predict.py', f'--workdir={workdir}', '--json',
                        *images])
  for line in result.stdout.strip().splitlines():
    record = json.loads(line)
    assert list(record['probabilities']) == list(classes)
    assert record['top_class'] in classes
  run(python, [REPO / 'scripts' / 'compare.py', workdir, f'--out={root / "comparison"}'])
  text = (root / 'comparison' / 'comparison.md').read_text()
  assert f'dataset {name}' in text
  unit = 'lesion' if name == 'isic2019' else 'patient'
  assert f'resampled by {unit}' in text

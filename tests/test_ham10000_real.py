"""Prepares the real HAM10000 download given by $SKINJAX_HAM10000_DIR (about 7 s on 2 CPU cores).

  SKINJAX_HAM10000_DIR=../shared/data/ham10000 .venv/bin/pytest tests/test_ham10000_real.py
"""

import os
import time

import numpy as np
import pytest

from configs import cpu_small
from configs import scratch_cnn
from skinjax import train
from skinjax.data import splits as splits_lib
from skinjax.data.constants import NUM_CLASSES
from skinjax.data.ham10000 import load, prepare

HAM10000_DIR = os.environ.get('SKINJAX_HAM10000_DIR')
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def prepared_dir(tmp_path_factory):
  if not HAM10000_DIR:
    pytest.skip('SKINJAX_HAM10000_DIR not set: point it at a HAM10000 download (Kaggle layout, '
                'flat folder or zips) to test preparing the real dataset')
  data_dir = tmp_path_factory.mktemp('tfds')
  start = time.perf_counter()
  prepare(HAM10000_DIR, data_dir)
  print(f'Prepared the real HAM10000 in {time.perf_counter() - start:.1f} s')
  return data_dir


@pytest.fixture(scope='module')
def real_metadata(prepared_dir):
  source, metadata = load(prepared_dir)
  assert len(source) == len(metadata['image_id'])
  return metadata


def test_scratch_cnn_trains_on_the_real_images(prepared_dir, tmp_path):
  """One short epoch of configs/scratch_cnn.py at 32 px, through grain workers, to the report."""
  config = scratch_cnn.get_config()
  config.data.data_dir = str(prepared_dir)
  config.data.image_size = 32
  config.train.num_epochs = 1
  config.train.batch_size = 64
  config.train.eval_batch_size = 256
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics['num_examples'] == 2003  # the grouped test split, every image counted once
  assert np.isfinite(metrics['loss'])
  assert (tmp_path / 'report' / 'confusion_matrix.png').exists()


def test_cpu_small_recipe_trains_on_the_real_images(prepared_dir, tmp_path):
  """configs/cpu_small.py as it is (weighting, augmentation, schedule), cut to one epoch at 32 px.

  A smoke test of the recipe's wiring on the real images, not of its figures: it must train
  through grain workers, pick the best checkpoint by validation balanced accuracy and write the
  test report with its lesion-resampled 95% intervals.
  """
  config = cpu_small.get_config()
  assert config.data.split == 'lesion_grouped'
  config.data.data_dir = str(prepared_dir)
  config.data.image_size = 32
  config.train.num_epochs = 1
  config.train.batch_size = 64
  config.train.eval_batch_size = 256
  start = time.perf_counter()
  metrics = train.train_and_evaluate(config, str(tmp_path))
  print(f'cpu_small smoke run: {time.perf_counter() - start:.1f} s')
  assert metrics['num_examples'] == 2003
  assert np.isfinite(metrics['loss'])
  assert 0.0 <= metrics['balanced_accuracy'] <= 1.0
  assert {'balanced_accuracy', 'macro_f1', 'melanoma_recall'} <= set(metrics['ci'])
  assert (tmp_path / 'checkpoints' / 'best').is_dir()
  assert (tmp_path / 'report' / 'classification_report.txt').exists()


def test_all_images_are_prepared(real_metadata):
  assert len(real_metadata['image_id']) == 10015
  assert len(set(real_metadata['image_id'])) == 10015
  assert len(set(real_metadata['lesion_id'])) == 7470


def test_grouped_split_leaks_nothing_and_keeps_class_mix(real_metadata):
  labels, lesions = real_metadata['label'], real_metadata['lesion_id']
  splits = splits_lib.make_splits(labels, lesions)
  assert splits_lib.leak_report(splits, lesions)['shared_lesions_total'] == 0
  splits_lib.check_every_class_present(splits, labels, NUM_CLASSES)
  overall = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
  for name, fraction in zip(splits_lib.SPLIT_NAMES, (0.6, 0.2, 0.2)):
    assert abs(len(splits[name]) / len(labels) - fraction) <= 0.01
    proportions = np.bincount(labels[splits[name]], minlength=NUM_CLASSES) / len(splits[name])
    np.testing.assert_allclose(proportions, overall, atol=0.02)


def test_random_image_split_leaks_about_a_third_of_test(real_metadata):
  labels, lesions = real_metadata['label'], real_metadata['lesion_id']
  splits = splits_lib.make_splits(labels, lesions, method='random_image')
  assert 0.25 < splits_lib.leak_report(splits, lesions)['test_images_with_lesion_in_train'] < 0.37

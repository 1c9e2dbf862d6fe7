"""Prepares the real HAM10000 download given by $SKINJAX_HAM10000_DIR (once, with
scripts/prepare_dataset.py: about 17 s on 2 CPU cores) and trains on it.

  SKINJAX_HAM10000_DIR=../shared/data/ham10000 .venv/bin/pytest tests/test_ham10000_real.py
"""

import csv
import hashlib
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from configs import cpu_small
from skinjax.data import handle
from skinjax.data import splits as splits_lib
from skinjax.data.constants import NUM_CLASSES
from skinjax.data.ham10000 import load
from skinjax.training import train
from tests.dataset_fixtures import ARCHIVE_DIAGNOSIS_1, ARCHIVE_DIAGNOSIS_3, write_label_map

REPO = pathlib.Path(__file__).resolve().parents[1]

HAM10000_DIR = os.environ.get('SKINJAX_HAM10000_DIR')
pytestmark = pytest.mark.slow


def prepare_with_the_script(data_dir, format_name: str, flags) -> str:
  """scripts/prepare_dataset.py --format=`format_name` into data_dir; its standard output."""
  result = subprocess.run([sys.executable, 'scripts/prepare_dataset.py', f'--format={format_name}',
                           f'--data_dir={data_dir}', *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  return result.stdout


@pytest.fixture(scope='module')
def prepared_by_the_script(tmp_path_factory):
  """(data_dir, the script's output): the real download prepared as `ham10000`, once.

  Every test here reads this one preparation; the script's output is checked by
  test_prepare_dataset_gives_the_same_splits_image_for_image[ham10000]. The script calls what
  skinjax.data.ham10000.prepare calls (prepared.prepare, format and name ham10000; that function
  is tested on fake downloads), so preparing a second time in this process proved nothing more
  and cost 17 s.
  """
  if not HAM10000_DIR:
    pytest.skip('SKINJAX_HAM10000_DIR not set: point it at a HAM10000 download (Kaggle layout, '
                'flat folder or zips) to test preparing the real dataset')
  data_dir = tmp_path_factory.mktemp('tfds')
  start = time.perf_counter()
  stdout = prepare_with_the_script(data_dir, 'ham10000', [f'--manual_dir={HAM10000_DIR}'])
  print(f'Prepared the real HAM10000 in {time.perf_counter() - start:.1f} s')
  return data_dir, stdout


@pytest.fixture(scope='module')
def prepared_dir(prepared_by_the_script):
  return prepared_by_the_script[0]


# The two training runs check that each recipe's pipeline runs on the real images through grain
# workers to the best checkpoint and the test report, not what it learns: they train on one in
# TRAIN_STRIDE of the training split's 6,008 images, and are validated and tested on the whole
# validation and test splits. Reading every training image took cpu_small's run from 19 to 46 s.
TRAIN_STRIDE = 8


@pytest.fixture
def fewer_training_images(monkeypatch):
  """handle.PreparedDataset.splits with one in TRAIN_STRIDE of the training images, every class
  still among them (checked: balanced sampling and class weights need each)."""
  grouped = handle.PreparedDataset.splits.func

  def splits(dataset):
    full = grouped(dataset)
    train_split = full['train'][::TRAIN_STRIDE]
    labels = dataset.metadata['label']
    assert set(labels[train_split]) == set(labels[full['train']]) == set(range(NUM_CLASSES))
    return {**full, 'train': train_split}

  monkeypatch.setattr(handle.PreparedDataset, 'splits', property(splits))


@pytest.fixture(scope='module')
def real_metadata(prepared_dir):
  source, metadata = load(prepared_dir)
  assert len(source) == len(metadata['image_id'])
  return metadata


def test_cpu_small_recipe_trains_on_the_real_images(prepared_dir, fewer_training_images,
                                                    tmp_path):
  """configs/cpu_small.py as it is (weighting, augmentation, schedule), cut to one epoch at 16 px
  on an eighth of the training images (TRAIN_STRIDE).

  A smoke test of the recipe's wiring on the real images, not of its figures: it must train
  through grain workers, pick the best checkpoint by validation balanced accuracy and write the
  test report with its lesion-resampled 95% intervals. It also stands for configs/scratch_cnn.py,
  the same network, whose class-weighted loss every tiny_config() run trains with (configs/demo.py).
  """
  config = cpu_small.get_config()
  assert config.data.split == 'lesion_grouped'
  config.data.data_dir = str(prepared_dir)
  config.data.image_size = 16  # the CNN's four 2x2 poolings leave 1x1: the least that runs
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
  assert (tmp_path / 'report' / 'confusion_matrix.png').exists()


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


# ---------------------------------------------------------------------------------------
# HAM10000 through scripts/prepare_dataset.py: the same splits as before datasets became data.

# sha256 of the sorted image ids of each split of configs/cpu_small.py (seed 0), computed on the
# real download with the code before this change (commit 54658fe), through prepare_ham10000.
GROUPED_SPLIT_SHA256 = {
    'train': '680b97cc5cff7204f4d1282c880ef962c55b401ca667600ddf29e3f9f4aaf5fe',
    'val': '965176ab6565a9f61474bc08553ab66206f21ff301df1fb0b43f9f91dc622832',
    'test': '79160ffef335e1a52d832755533708c13bb59a5199ed7804d497da30f1824791'}
RANDOM_SPLIT_SHA256 = {
    'train': '3136a64c59b42df729326f19e480623fb4b98b6e20cd4d04e88870c06b5f7e60',
    'val': 'bcbd664e196f0ee07081c406ee5331e1a7061e09f3b59bfcb820a2e68e696e25',
    'test': '1710a5f7614e7a984d0271506500e583249b4af2b5fe8faddaef0cb09477e297'}
HAM10000_COUNTS = {'akiec': 327, 'bcc': 514, 'bkl': 1099, 'df': 115, 'mel': 1113, 'nv': 6705,
                   'vasc': 142}


def split_hashes(data_dir, dataset='ham10000', method='lesion_grouped'):
  config = cpu_small.get_config()
  config.data.data_dir, config.data.dataset, config.data.split = str(data_dir), dataset, method
  dataset = handle.PreparedDataset.open(config)
  return {name: hashlib.sha256(','.join(sorted(dataset.metadata['image_id'][indices])).encode())
          .hexdigest() for name, indices in dataset.splits.items()}


def test_cpu_small_splits_and_fingerprint_are_unchanged(prepared_dir):
  config = cpu_small.get_config()
  config.data.data_dir = str(prepared_dir)
  csv_sha256 = hashlib.sha256(
      (pathlib.Path(HAM10000_DIR) / 'HAM10000_metadata.csv').read_bytes()).hexdigest()
  assert handle.PreparedDataset.open(config).fingerprint == {
      'source': 'ham10000', 'name': 'ham10000', 'version': '1.0.0', 'config': 'short256',
      'metadata_sha256': csv_sha256, 'num_examples': 10015, 'class_counts': HAM10000_COUNTS,
      'skipped_images': 0}
  assert split_hashes(prepared_dir) == GROUPED_SPLIT_SHA256
  assert split_hashes(prepared_dir, method='random_image') == RANDOM_SPLIT_SHA256


@pytest.fixture(scope='module')
def archive_download(tmp_path_factory):
  """HAM10000 as `isic image download` would lay it out: OUT/<isic_id>.jpg (links to the real
  images) and a metadata.csv in the archive's columns, built from HAM10000_metadata.csv."""
  if not HAM10000_DIR:
    pytest.skip('SKINJAX_HAM10000_DIR not set')
  out = tmp_path_factory.mktemp('isic_archive')
  with open(pathlib.Path(HAM10000_DIR) / 'HAM10000_metadata.csv', newline='') as f:
    ham_rows = list(csv.DictReader(f))
  rows = []
  for row in sorted(ham_rows, key=lambda r: r['image_id']):
    image = next(pathlib.Path(HAM10000_DIR).glob(f'HAM10000_images_part_*/{row["image_id"]}.jpg'))
    (out / image.name).symlink_to(image)
    rows.append({'isic_id': row['image_id'], 'attribution': 'ViDIR Group, Medical University of Vienna',
                 'copyright_license': 'CC-BY-NC', 'age_approx': row['age'].removesuffix('.0'),
                 'anatom_site_general': row['localization'], 'concomitant_biopsy': str(row['dx_type'] == 'histo').lower(),
                 'diagnosis_1': ARCHIVE_DIAGNOSIS_1.get(row['dx'], 'Benign'),
                 'diagnosis_3': ARCHIVE_DIAGNOSIS_3[row['dx']], 'image_type': 'dermoscopic',
                 'lesion_id': row['lesion_id'], 'sex': row['sex']})
  with open(out / 'metadata.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  label_map = write_label_map(out.parent / 'archive_to_ham10000.csv',
                              {v: k for k, v in ARCHIVE_DIAGNOSIS_3.items()})
  return out, label_map


@pytest.mark.parametrize('format_name', ['ham10000', 'isic_archive'])
def test_prepare_dataset_gives_the_same_splits_image_for_image(format_name, request, tmp_path):
  if format_name == 'ham10000':  # the module's one preparation, by the script
    data_dir, stdout = request.getfixturevalue('prepared_by_the_script')
    name = 'ham10000'
  else:
    out, label_map = request.getfixturevalue('archive_download')
    data_dir, name = tmp_path, f'ham_via_{format_name}'
    stdout = prepare_with_the_script(data_dir, format_name, [
        f'--name={name}', f'--manual_dir={out}', '--label_column=diagnosis_3',
        f'--label_map={label_map}'])
  assert 'Classes: akiec 327, bcc 514, bkl 1099, df 115, mel 1113, nv 6705, vasc 142' in stdout
  assert 'grouped by lesion_id (7470 groups)' in stdout
  assert split_hashes(data_dir, name) == GROUPED_SPLIT_SHA256
  assert split_hashes(data_dir, name, 'random_image') == RANDOM_SPLIT_SHA256

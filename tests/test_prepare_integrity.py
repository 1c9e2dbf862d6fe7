"""prepare() and scripts/prepare_ham10000.py: all or nothing, a no-op when done, fingerprinted, and
clear about bad images (fatal, or left out and listed with skip_bad_images)."""

import collections
import csv
import hashlib
import json
import logging
import pathlib
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from skinjax.data import handle
from skinjax.data import storage
from skinjax.data.constants import CLASS_NAMES
from skinjax.data.ham10000 import load, prepare
from skinjax.data.handle import DatasetNotPreparedError
from skinjax.data.storage import STAGING_PREFIX, DatasetError

import ham_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT_SIDE = 32
NUM_LESIONS = 21  # three per class: the fewest that lets every class reach train, val and test
NUM_IMAGES = 2 * NUM_LESIONS


@pytest.fixture
def download(tmp_path):
  return ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                         images_per_lesion=2)


@pytest.fixture
def data_dir(tmp_path):
  return tmp_path / 'tfds'


def fingerprint(data_dir, short_side):
  return handle.PreparedDataset(data_dir, 'ham10000', short_side).fingerprint


def is_prepared(data_dir, short_side):
  return storage.is_prepared(data_dir, 'ham10000', short_side)


def version_dir(data_dir) -> pathlib.Path:
  return data_dir / 'ham10000' / f'short{SHORT_SIDE}' / '1.0.0'


def csv_rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def images_of(download):
  return sorted(download.glob('HAM10000_images_part_*/*.jpg'))


class Interrupted(BaseException):
  """Like Ctrl-C: no `except Exception` stops it on its way out."""


def count_encoded_images(monkeypatch, interrupt_after: int | None = None) -> list[str]:
  """Makes the builder note each image it encodes, and optionally be interrupted after some."""
  encoded = []
  original = storage.encode_for_storage

  def encode(data, short_side, location):
    if interrupt_after is not None and len(encoded) == interrupt_after:
      raise Interrupted()
    encoded.append(location)
    return original(data, short_side, location)

  monkeypatch.setattr(storage, 'encode_for_storage', encode)
  return encoded


def assert_loads(data_dir, num_examples=NUM_IMAGES):
  source, metadata = load(data_dir, short_side=SHORT_SIDE)
  assert len(source) == len(metadata['image_id']) == num_examples
  assert source[num_examples - 1]['image_id'].decode() == metadata['image_id'][num_examples - 1]
  return metadata


# ---------------------------------------------------------------------------------------
# The fingerprint.


def test_fingerprint_records_the_metadata_hash_and_class_counts(download, data_dir, monkeypatch):
  prepare(download, data_dir, short_side=SHORT_SIDE)
  csv_path = download / ham_fixtures.METADATA_NAME
  dx_counts = collections.Counter(row['dx'] for row in csv_rows(csv_path))

  def no_reading(*args, **kwargs):
    raise AssertionError('fingerprint must not read the records')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'as_data_source', no_reading)
  recorded = fingerprint(data_dir, SHORT_SIDE)
  assert recorded == {
      'source': 'ham10000',
      'name': 'ham10000',
      'version': '1.0.0',
      'config': f'short{SHORT_SIDE}',
      'metadata_sha256': hashlib.sha256(csv_path.read_bytes()).hexdigest(),
      'num_examples': NUM_IMAGES,
      'class_counts': {name: dx_counts[name] for name in CLASS_NAMES},
      'skipped_images': 0,
  }
  assert json.loads(json.dumps(recorded)) == recorded  # The trainer writes it to config.json.


def test_fingerprint_of_an_unprepared_dataset(data_dir):
  with pytest.raises(DatasetNotPreparedError, match='scripts/prepare_ham10000.py --manual_dir'):
    fingerprint(data_dir, SHORT_SIDE)


def test_fingerprint_of_a_dataset_prepared_by_older_code_asks_for_a_rebuild(download, data_dir):
  prepare(download, data_dir, short_side=SHORT_SIDE)
  (version_dir(data_dir) / 'metadata.json').unlink()  # Older skinjax recorded nothing there.
  with pytest.raises(DatasetNotPreparedError) as error:
    fingerprint(data_dir, SHORT_SIDE)
  assert 'prepared by an older skinjax' in str(error.value)
  assert str(error.value).endswith(
      f'prepare_ham10000.py --manual_dir=DOWNLOAD_DIR --data_dir={data_dir} --image_size={SHORT_SIDE} '
      '--overwrite')
  assert_loads(data_dir)  # Its data are complete: it still loads.
  prepare(download, data_dir, short_side=SHORT_SIDE, overwrite=True)
  assert fingerprint(data_dir, SHORT_SIDE)['num_examples'] == NUM_IMAGES


# ---------------------------------------------------------------------------------------
# All or nothing.


def test_interrupted_prepare_leaves_nothing_that_loads(download, data_dir, monkeypatch):
  count_encoded_images(monkeypatch, interrupt_after=5)
  with pytest.raises(Interrupted):
    prepare(download, data_dir, short_side=SHORT_SIDE)
  assert not is_prepared(data_dir, SHORT_SIDE)
  with pytest.raises(DatasetNotPreparedError):
    load(data_dir, short_side=SHORT_SIDE)
  with pytest.raises(DatasetNotPreparedError):
    fingerprint(data_dir, SHORT_SIDE)
  assert list(data_dir.iterdir()) == []  # Not even the staging directory is left.

  monkeypatch.undo()
  prepare(download, data_dir, short_side=SHORT_SIDE)
  assert_loads(data_dir)


def test_interrupted_overwrite_keeps_the_previous_dataset(download, data_dir, monkeypatch):
  prepare(download, data_dir, short_side=SHORT_SIDE)
  before = fingerprint(data_dir, SHORT_SIDE)
  metadata = assert_loads(data_dir)
  count_encoded_images(monkeypatch, interrupt_after=5)
  with pytest.raises(Interrupted):
    prepare(download, data_dir, short_side=SHORT_SIDE, overwrite=True)
  assert fingerprint(data_dir, SHORT_SIDE) == before
  assert list(assert_loads(data_dir)['image_id']) == list(metadata['image_id'])
  assert not list(data_dir.glob(STAGING_PREFIX + '*'))


def test_failed_overwrite_keeps_the_previous_dataset(download, data_dir):
  prepare(download, data_dir, short_side=SHORT_SIDE)
  before = fingerprint(data_dir, SHORT_SIDE)
  image = images_of(download)[3]
  ham_fixtures.corrupt_image(image)
  with pytest.raises(DatasetError, match=f'Cannot decode the image {image}'):
    prepare(download, data_dir, short_side=SHORT_SIDE, overwrite=True)
  assert fingerprint(data_dir, SHORT_SIDE) == before
  assert_loads(data_dir)


def test_leftovers_of_a_killed_prepare_are_not_taken_for_a_dataset(download, data_dir, caplog):
  # What a hard kill can leave: a staging directory, and a version directory without
  # dataset_info.json (e.g. from copying a dataset by hand, cut short).
  leftover = data_dir / f'{STAGING_PREFIX}killed' / 'ham10000' / f'short{SHORT_SIDE}' / 'incomplete.X_1.0.0'
  leftover.mkdir(parents=True)
  (leftover / 'ham10000-train.array_record-00000-of-00001').write_bytes(b'partial')
  version_dir(data_dir).mkdir(parents=True)
  (version_dir(data_dir) / 'ham10000-train.array_record-00000-of-00001').write_bytes(b'partial')
  assert not is_prepared(data_dir, SHORT_SIDE)
  with pytest.raises(DatasetNotPreparedError):
    load(data_dir, short_side=SHORT_SIDE)

  with caplog.at_level(logging.WARNING):
    prepare(download, data_dir, short_side=SHORT_SIDE)  # TFDS alone would 'reuse' the partial one.
  assert_loads(data_dir)
  assert 'left by interrupted prepares' in caplog.text and f'{STAGING_PREFIX}killed' in caplog.text


# ---------------------------------------------------------------------------------------
# Once prepared, prepare is a no-op unless overwrite.


def test_prepare_again_is_a_no_op_unless_overwrite(download, data_dir, monkeypatch):
  encoded = count_encoded_images(monkeypatch)
  prepare(download, data_dir, short_side=SHORT_SIDE)
  assert len(encoded) == NUM_IMAGES
  info_file = version_dir(data_dir) / 'dataset_info.json'
  stat = info_file.stat()
  before = fingerprint(data_dir, SHORT_SIDE)

  # Even a changed download is not looked at: the dataset is what was prepared.
  csv_path = download / ham_fixtures.METADATA_NAME
  csv_path.write_text(''.join(csv_path.read_text().splitlines(keepends=True)[:-1]))
  prepare(download, data_dir, short_side=SHORT_SIDE)
  assert len(encoded) == NUM_IMAGES
  assert (info_file.stat().st_ino, info_file.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
  assert fingerprint(data_dir, SHORT_SIDE) == before

  prepare(download, data_dir, short_side=SHORT_SIDE, overwrite=True)
  assert len(encoded) == 2 * NUM_IMAGES - 1
  after = fingerprint(data_dir, SHORT_SIDE)
  assert after['num_examples'] == NUM_IMAGES - 1
  assert after['metadata_sha256'] == hashlib.sha256(csv_path.read_bytes()).hexdigest()
  assert after['metadata_sha256'] != before['metadata_sha256']
  assert_loads(data_dir, NUM_IMAGES - 1)


# ---------------------------------------------------------------------------------------
# Bad images: fatal by default (see test_ham10000_builder), left out with skip_bad_images.


def test_skip_bad_images_leaves_them_out_and_lists_them(download, data_dir):
  rows = {row['image_id']: row for row in csv_rows(download / ham_fixtures.METADATA_NAME)}
  truncated, garbage = images_of(download)[2], images_of(download)[9]
  ham_fixtures.corrupt_image(truncated)
  garbage.write_bytes(b'not a JPEG at all')
  prepare(download, data_dir, short_side=SHORT_SIDE, skip_bad_images=True)

  skipped = csv_rows(version_dir(data_dir) / 'skipped.csv')
  assert [(row['image_id'], row['path']) for row in skipped] == [
      (path.stem, str(path)) for path in sorted([truncated, garbage], key=lambda p: list(rows).index(p.stem))]
  for row in skipped:
    assert row['reason'].startswith('cannot decode it: ')
  metadata = assert_loads(data_dir, NUM_IMAGES - 2)
  assert not {truncated.stem, garbage.stem} & set(metadata['image_id'])
  recorded = fingerprint(data_dir, SHORT_SIDE)
  assert recorded['skipped_images'] == 2 and recorded['num_examples'] == NUM_IMAGES - 2
  expected = collections.Counter(row['dx'] for image_id, row in rows.items()
                                 if image_id not in (truncated.stem, garbage.stem))
  assert recorded['class_counts'] == {name: expected[name] for name in CLASS_NAMES}


def test_skip_bad_images_skips_an_unreadable_zip_member(tmp_path, data_dir):
  download = ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                             images_per_lesion=2, layout='zip')
  member = ham_fixtures.damage_first_image_in_zip(download / 'archive.zip')
  prepare(download, data_dir, short_side=SHORT_SIDE, skip_bad_images=True)
  skipped, = csv_rows(version_dir(data_dir) / 'skipped.csv')
  assert skipped['path'] == f'{download / "archive.zip"}:{member}'
  assert skipped['reason'].startswith('cannot read it: ')
  assert_loads(data_dir, NUM_IMAGES - 1)


def test_no_readable_image_at_all_is_an_error_even_when_skipping(download, data_dir):
  for image in images_of(download):
    ham_fixtures.corrupt_image(image)
  with pytest.raises(DatasetError, match=f'None of the {NUM_IMAGES} images'):
    prepare(download, data_dir, short_side=SHORT_SIDE, skip_bad_images=True)
  assert not is_prepared(data_dir, SHORT_SIDE)


# ---------------------------------------------------------------------------------------
# The script: exit codes and summary.


def run_script(*flags):
  return subprocess.run([sys.executable, str(REPO / 'scripts' / 'prepare_ham10000.py'), *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_script_on_a_bad_image_then_skipping_it_then_again(download, data_dir):
  image = images_of(download)[0]
  ham_fixtures.corrupt_image(image)
  unlisted = image.parent / 'ISIC_9999999.jpg'
  unlisted.write_bytes(images_of(download)[1].read_bytes())
  flags = [f'--manual_dir={download}', f'--data_dir={data_dir}', f'--image_size={SHORT_SIDE}']

  failed = run_script(*flags)
  assert failed.returncode != 0
  assert f'Cannot decode the image {image}' in failed.stderr and '--skip_bad_images' in failed.stderr
  assert 'Traceback' not in failed.stderr
  assert not is_prepared(data_dir, SHORT_SIDE)

  skipped = run_script(*flags, '--skip_bad_images')
  assert skipped.returncode == 0, skipped.stderr
  assert f'(ham10000, {NUM_IMAGES - 1} images, short side {SHORT_SIDE}) prepared' in skipped.stdout
  assert f'Skipped 1 unreadable images, listed in {version_dir(data_dir) / "skipped.csv"}' in skipped.stdout
  assert 'Ignoring 1 images' in skipped.stderr and 'ISIC_9999999' in skipped.stderr
  # Three lesions a class, one image left out: val lacks a class, a warning and not an error.
  assert "warning: split 'val'" in skipped.stdout and 'has no images of class' in skipped.stdout

  again = run_script(*flags)
  assert again.returncode == 0, again.stderr
  assert 'already prepared' in again.stdout and '--overwrite' in again.stdout

  rebuilt = run_script(*flags, '--overwrite')  # Without --skip_bad_images: fails, keeps the old one.
  assert rebuilt.returncode != 0 and f'Cannot decode the image {image}' in rebuilt.stderr
  assert fingerprint(data_dir, SHORT_SIDE)['skipped_images'] == 1
  assert_loads(data_dir, NUM_IMAGES - 1)

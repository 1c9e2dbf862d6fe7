"""HAM10000 read from its download layouts, prepared and loaded, and scripts/prepare_ham10000.py,
on fake downloads."""

import csv
import io
import logging
import pathlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from skinjax.data.constants import CLASS_NAMES
from skinjax.data.ham10000 import load, prepare
from skinjax.data.handle import DatasetNotPreparedError
from skinjax.data.storage import DatasetError

import ham_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT_SIDE = 32
NUM_LARGE = 3  # The first images of the CSV are 120x90, larger than SHORT_SIDE.
# Three lesions of each class: the fewest that lets every class reach train, val and test.
NUM_LESIONS = 21


def fake_rows(**kwargs):
  return {row['image_id']: row
          for row in ham_fixtures.make_fake_metadata(**{'num_lesions': NUM_LESIONS, **kwargs})}


@pytest.fixture(scope='module', params=ham_fixtures.LAYOUTS)
def prepared(request, tmp_path_factory):
  """(layout, manual_dir, data_dir) of a fake download prepared at SHORT_SIDE."""
  root = tmp_path_factory.mktemp(request.param)
  manual_dir = ham_fixtures.make_kaggle_folder(root / 'download', layout=request.param,
                                               num_lesions=NUM_LESIONS, num_large_images=NUM_LARGE)
  prepare(manual_dir, root / 'tfds', short_side=SHORT_SIDE)
  return request.param, manual_dir, root / 'tfds'


def test_prepare_stores_all_examples_with_their_metadata(prepared):
  _, _, data_dir = prepared
  rows = fake_rows()
  source, metadata = load(data_dir, short_side=SHORT_SIDE)
  assert len(source) == len(rows)
  assert sorted(metadata['image_id']) == sorted(rows)
  assert set(metadata['dx']) == set(CLASS_NAMES)
  assert metadata['label'].dtype == np.int64
  for i in range(len(source)):
    example = source[i]
    image_id = example['image_id'].decode()
    row = rows[image_id]
    assert example['label'] == CLASS_NAMES.index(row['dx'])
    assert [metadata[key][i] for key in ('image_id', 'group', 'dx', 'label')] == [
        image_id, row['lesion_id'], row['dx'], example['label']]
    assert example['group'].decode() == row['lesion_id'] and example['dx'].decode() == row['dx']
    for key in ('dx_type', 'age', 'sex', 'localization'):  # kept as text; an unknown age is empty
      assert example['metadata'][key].decode() == row[key]


def test_images_are_shrunk_to_the_short_side_and_never_upscaled(prepared):
  layout, manual_dir, data_dir = prepared
  large_ids = [row['image_id'] for row in ham_fixtures.make_fake_metadata(NUM_LESIONS)[:NUM_LARGE]]
  source, _ = load(data_dir, short_side=SHORT_SIDE)
  for i in range(len(source)):
    example = source[i]
    assert isinstance(example['image'], bytes)  # Left encoded for the input pipeline.
    image = Image.open(io.BytesIO(example['image']))
    assert image.format == 'JPEG' and image.mode == 'RGB'
    image_id = example['image_id'].decode()
    if image_id in large_ids:
      assert image.size == (43, 32)  # 120x90 scaled by 32/90, aspect ratio kept.
    else:
      assert image.size == (40, 30)
      if layout == 'kaggle':  # Small images are stored as the very bytes of the download.
        original, = manual_dir.glob(f'HAM10000_images_part_*/{image_id}.jpg')
        assert example['image'] == original.read_bytes()


def test_source_survives_pickling_for_worker_processes(prepared):
  _, _, data_dir = prepared
  source, _ = load(data_dir, short_side=SHORT_SIDE)
  copy = pickle.loads(pickle.dumps(source))
  assert len(copy) == len(source)
  assert [copy[3][key] for key in ('image', 'image_id')] == [source[3][key] for key in ('image', 'image_id')]


def test_default_short_side_stores_small_images_unchanged(tmp_path):
  download = ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                             images_per_lesion=1, num_large_images=2)  # 120x90: under 256
  prepare(download, tmp_path / 'tfds')
  source, metadata = load(tmp_path / 'tfds')
  assert len(source) == len(metadata['label']) == NUM_LESIONS
  for i in range(len(source)):
    original, = download.glob(f'HAM10000_images_part_*/{metadata["image_id"][i]}.jpg')
    assert source[i]['image'] == original.read_bytes()
  copy = pickle.loads(pickle.dumps(source))
  assert copy[6]['image'] == source[6]['image']


def test_load_without_cached_metadata_reads_it_from_the_records(prepared, tmp_path):
  _, _, data_dir = prepared
  _, cached = load(data_dir, short_side=SHORT_SIDE)
  metadata_file, = data_dir.glob('ham10000/short32/*/metadata.csv')
  saved = metadata_file.read_bytes()
  try:
    metadata_file.unlink()
    _, recomputed = load(data_dir, short_side=SHORT_SIDE)
  finally:
    metadata_file.write_bytes(saved)
  assert cached.keys() == recomputed.keys()
  for key in cached:
    np.testing.assert_array_equal(cached[key], recomputed[key])


def test_prepare_again_reuses_the_dataset(prepared):
  _, manual_dir, data_dir = prepared
  assert prepare(manual_dir, data_dir, short_side=SHORT_SIDE).num_examples == len(fake_rows())


def test_load_unprepared_size_gives_the_prepare_command(prepared):
  _, _, data_dir = prepared
  with pytest.raises(DatasetNotPreparedError) as error:
    load(data_dir, short_side=64)
  message = str(error.value)
  assert isinstance(error.value, FileNotFoundError)
  assert message.endswith('python scripts/prepare_ham10000.py --manual_dir=DOWNLOAD_DIR '
                          f'--data_dir={data_dir} --image_size=64')
  assert 'short side 32' in message  # The size that is prepared there.
  assert 'doi:10.7910/DVN/DBW86T' in message


def test_load_from_empty_dir_gives_the_default_prepare_command(tmp_path):
  with pytest.raises(DatasetNotPreparedError) as error:
    load(tmp_path)
  assert str(error.value).endswith(f'--data_dir={tmp_path}')  # No --image_size for the default.
  assert 'It holds' not in str(error.value)


def test_duplicate_lowercase_folders_of_the_kaggle_archive_are_ignored(tmp_path):
  # The Kaggle archive holds each image folder twice, as HAM10000_images_part_* and ham10000_images_part_*.
  download = ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                             images_per_lesion=2)
  for part in download.glob('HAM10000_images_part_*'):
    shutil.copytree(part, download / part.name.lower())
  assert prepare(download, tmp_path / 'tfds', short_side=SHORT_SIDE).num_examples == 2 * NUM_LESIONS


def test_paths_may_start_with_a_tilde(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  with pytest.raises(DatasetNotPreparedError, match=f'--data_dir={tmp_path}/tfds'):
    load('~/tfds')
  with pytest.raises(DatasetError, match=f'{tmp_path}/download does not exist'):
    prepare('~/download', '~/tfds')


# ---------------------------------------------------------------------------------------
# Broken downloads: each fails with a DatasetError that names the problem.


@pytest.fixture
def download(tmp_path):
  return ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                         images_per_lesion=2)


def rewrite_metadata(download, edit):
  path = download / ham_fixtures.METADATA_NAME
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  rows, columns = edit(rows)
  path.write_bytes(ham_fixtures.metadata_csv(rows, columns))


def prepare_fails(download, tmp_path, *patterns):
  with pytest.raises(DatasetError) as error:
    prepare(download, tmp_path / 'tfds', short_side=SHORT_SIDE)
  for pattern in patterns:
    assert pattern in str(error.value), str(error.value)
  with pytest.raises(DatasetNotPreparedError):  # Nothing half-written is left to be loaded.
    load(tmp_path / 'tfds', short_side=SHORT_SIDE)
  return str(error.value)


def test_unknown_label(download, tmp_path):
  rewrite_metadata(download, lambda rows: ([{**r, 'dx': 'melanoma'} if i in (3, 7) else r
                                            for i, r in enumerate(rows)], ham_fixtures.METADATA_COLUMNS))
  prepare_fails(download, tmp_path, 'HAM10000_metadata.csv', "unknown dx labels {'melanoma': 2}",
                "'melanoma' in rows 5, 9")  # Data row i is file row i + 2: the header is row 1.


def test_missing_column(download, tmp_path):
  columns = [c for c in ham_fixtures.METADATA_COLUMNS if c != 'dx_type']
  rewrite_metadata(download, lambda rows: (rows, columns))
  prepare_fails(download, tmp_path, 'HAM10000_metadata.csv', "lacks the columns ['dx_type']")


def test_renamed_column(download, tmp_path):
  columns = ['diagnosis' if c == 'dx' else c for c in ham_fixtures.METADATA_COLUMNS]
  rewrite_metadata(download, lambda rows: ([{**r, 'diagnosis': r['dx']} for r in rows], columns))
  prepare_fails(download, tmp_path, "lacks the columns ['dx']", "'diagnosis'", 'use the original')


def test_semicolon_separated_metadata(download, tmp_path):
  path = download / ham_fixtures.METADATA_NAME
  path.write_text(path.read_text().replace(',', ';'))  # As some spreadsheet locales export it.
  prepare_fails(download, tmp_path, 'lacks the columns', 'separated by something else than commas')


def test_truncated_metadata_row(download, tmp_path):
  path = download / ham_fixtures.METADATA_NAME
  lines = path.read_text().splitlines()
  truncated = ','.join(lines[-1].split(',')[:4])  # As a download cut off mid-line leaves it.
  path.write_text('\n'.join(lines[:-1] + [truncated]) + '\n')
  prepare_fails(download, tmp_path, f'row {len(lines)}: 4 fields where the header has 7')


def test_bad_age(download, tmp_path):
  rewrite_metadata(download, lambda rows: ([{**rows[0], 'age': 'old'}] + rows[1:], ham_fixtures.METADATA_COLUMNS))
  prepare_fails(download, tmp_path, "row 2: age 'old' is not a number")


def test_duplicate_image_id(download, tmp_path):
  rewrite_metadata(download, lambda rows: (rows + rows[4:5], ham_fixtures.METADATA_COLUMNS))
  duplicate = ham_fixtures.make_fake_metadata(num_lesions=NUM_LESIONS, images_per_lesion=2)[4]['image_id']
  prepare_fails(download, tmp_path, 'lists 1 image_id values more than once',
                f"'{duplicate}' in rows 6, {2 + 2 * NUM_LESIONS}", 'remove the duplicated rows')


def test_missing_images_are_named_and_counted(download, tmp_path):
  images = sorted(download.glob('HAM10000_images_part_2/*.jpg'))[:2]
  for image in images:
    image.unlink()
  prepare_fails(download, tmp_path, '2 images listed in the metadata are missing',
                *(image.stem for image in images))


def test_corrupt_image_is_named(download, tmp_path):
  image = sorted(download.glob('HAM10000_images_part_1/*.jpg'))[0]
  image.write_bytes(image.read_bytes()[:200])
  prepare_fails(download, tmp_path, f'Cannot decode the image {image}')


def test_unknown_layout_lists_the_expected_ones(tmp_path):
  (tmp_path / 'download').mkdir()
  (tmp_path / 'download' / 'notes.txt').write_text('hello')
  prepare_fails(tmp_path / 'download', tmp_path, 'no ISIC_*.jpg images', 'notes.txt',
                'Kaggle folders', 'flat folder', 'zip file(s)')


def test_missing_manual_dir(tmp_path):
  prepare_fails(tmp_path / 'nowhere', tmp_path, f'{tmp_path / "nowhere"} does not exist', 'kmader')


def test_broken_zip_is_named(tmp_path):
  (tmp_path / 'download').mkdir()
  (tmp_path / 'download' / 'archive.zip').write_bytes(b'PK\x03\x04 not really a zip')
  prepare_fails(tmp_path / 'download', tmp_path, 'archive.zip is not a readable zip file')


def test_damaged_zip_member_is_named(tmp_path):
  download = ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=NUM_LESIONS,
                                             images_per_lesion=2, layout='zip')
  archive = download / 'archive.zip'
  member = ham_fixtures.damage_first_image_in_zip(archive)
  prepare_fails(download, tmp_path, f'Cannot read the image {archive}:{member}')


def test_images_missing_from_the_metadata_only_warn(download, tmp_path, caplog):
  (download / 'HAM10000_images_part_2' / 'ISIC_9999999.jpg').write_bytes(
      ham_fixtures.random_jpeg((40, 30), np.random.default_rng(0)))
  with caplog.at_level(logging.WARNING):
    prepared = prepare(download, tmp_path / 'tfds', short_side=SHORT_SIDE)
  assert prepared.num_examples == 2 * NUM_LESIONS
  assert 'Ignoring 1 images' in caplog.text and 'ISIC_9999999' in caplog.text


# ---------------------------------------------------------------------------------------
# The script, end to end.


def run_script(*flags):
  return subprocess.run([sys.executable, str(REPO / 'scripts' / 'prepare_ham10000.py'), *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_prepare_script_writes_a_leak_free_split(tmp_path):
  download = ham_fixtures.make_kaggle_folder(tmp_path / 'download', num_lesions=70,
                                             images_per_lesion=(1, 3), image_size=(16, 12))
  result = run_script(f'--manual_dir={download}', f'--data_dir={tmp_path / "tfds"}',
                      f'--image_size={SHORT_SIDE}', '--split_seed=1')
  assert result.returncode == 0, result.stderr
  # TFDS's 'Downloading and preparing dataset' would be untrue: nothing is downloaded.
  assert result.stdout.startswith(f'Preparing ham10000: storing {len(fake_rows(num_lesions=70))} '
                                  f'images from your download with short side at most {SHORT_SIDE}')
  assert 'ownloading' not in result.stdout and 'downloaded and prepared' not in result.stdout
  splits_csv = tmp_path / 'tfds' / 'ham10000' / 'short32' / '1.0.0' / 'splits.csv'
  assert f'wrote {splits_csv}' in result.stdout
  assert 'grouped: 0 (train-val 0, train-test 0, val-test 0)' in result.stdout
  assert 'random_image (the study):' in result.stdout
  with open(splits_csv, newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(ham_fixtures.make_fake_metadata(num_lesions=70))
  split_of_lesion = {}
  for row in rows:
    assert split_of_lesion.setdefault(row['lesion_id'], row['split']) == row['split']
  assert {row['split'] for row in rows} == {'train', 'val', 'test'}


def test_prepare_script_reports_errors_without_traceback(tmp_path):
  result = run_script(f'--manual_dir={tmp_path / "nowhere"}', f'--data_dir={tmp_path / "tfds"}')
  assert result.returncode != 0
  assert 'does not exist' in result.stderr
  assert 'Traceback' not in result.stderr

"""External images and their label CSVs: both formats, and each way they can be wrong."""

import numpy as np
import pytest
from PIL import Image

from skinjax.data.constants import CLASS_NAMES, ISIC2018_COLUMNS, ISIC2019_COLUMNS
from skinjax.evaluation import external


def write_jpegs(folder, names, seed=0):
  """Tiny random JPEGs of assorted sizes and aspect ratios."""
  rng = np.random.default_rng(seed)
  folder.mkdir(parents=True, exist_ok=True)
  for i, name in enumerate(names):
    width, height = [(40, 30), (17, 23), (64, 64), (90, 35)][i % 4]
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
        folder / f'{name}.jpg', quality=90)


def write_ham_csv(path, ids, dx, lesions=None):
  header = 'lesion_id,image_id,dx,dx_type\n' if lesions is not None else 'image_id,dx\n'
  rows = [f'{lesions[i]},{image_id},{d},histo' if lesions is not None else f'{image_id},{d}'
          for i, (image_id, d) in enumerate(zip(ids, dx))]
  path.write_text(header + '\n'.join(rows) + '\n')


def write_isic_csv(path, ids, dx):
  lines = ['image,' + ','.join(ISIC2018_COLUMNS)]
  for image_id, d in zip(ids, dx):
    lines.append(image_id + ',' + ','.join('1.0' if c.lower() == d else '0.0' for c in ISIC2018_COLUMNS))
  path.write_text('\n'.join(lines) + '\n')


IDS = [f'ISIC_{i:07d}' for i in range(7)]
DX = list(CLASS_NAMES)


def test_ham10000_csv_with_lesions(tmp_path):
  lesions = [f'L{i // 2}' for i in range(7)]
  write_ham_csv(tmp_path / 'l.csv', IDS, [d.upper() for d in DX], lesions=lesions)
  labelled = external.read_labels(tmp_path / 'l.csv')
  assert labelled.csv_format == 'metadata'
  assert list(labelled.image_ids) == IDS and list(labelled.labels) == list(range(7))
  assert list(labelled.groups) == lesions


def test_isic2018_csv_maps_columns_by_name(tmp_path):
  write_isic_csv(tmp_path / 'gt.csv', IDS, DX)
  labelled = external.read_labels(tmp_path / 'gt.csv')
  assert labelled.csv_format == 'isic2018' and labelled.groups is None
  assert [CLASS_NAMES[label] for label in labelled.labels] == DX


def test_isic2019_csv_maps_ak_to_akiec(tmp_path):
  # The ISIC 2019 ground truth, column order and float spelling as published.
  isic2019_dx = ['AK', 'BCC', 'BKL', 'DF', 'MEL', 'NV', 'VASC']
  lines = ['image,' + ','.join(ISIC2019_COLUMNS)]
  for image_id, d in zip(IDS, isic2019_dx):
    lines.append(image_id + ',' + ','.join('1.0' if c == d else '0.0' for c in ISIC2019_COLUMNS))
  (tmp_path / 'gt.csv').write_text('\n'.join(lines) + '\n')
  labelled = external.read_labels(tmp_path / 'gt.csv')
  assert labelled.csv_format == 'isic2019' and labelled.groups is None
  assert list(labelled.image_ids) == IDS
  assert [CLASS_NAMES[label] for label in labelled.labels] == DX


def test_isic2019_classes_outside_ham10000_are_refused_by_name(tmp_path):
  header = 'image,' + ','.join(ISIC2019_COLUMNS)
  (tmp_path / 'gt.csv').write_text(f'{header}\nISIC_1,1,0,0,0,0,0,0,0,0\n'
                                   f'ISIC_2,0,0,0,0,0,0,0,1,0\nISIC_3,0,0,0,0,0,0,0,0,1\n')
  with pytest.raises(external.ExternalDataError,
                     match=r'2 images .* ISIC_2 \(SCC\), ISIC_3 \(UNK\)\. Drop the rows'):
    external.read_labels(tmp_path / 'gt.csv')


def test_image_ids_with_a_suffix_and_images_in_subfolders(tmp_path):
  write_jpegs(tmp_path / 'images' / 'part_1', IDS[:3])
  write_jpegs(tmp_path / 'images' / 'part_2', IDS[3:])
  write_ham_csv(tmp_path / 'l.csv', [i + '.jpg' for i in IDS], DX)
  labelled = external.read_labels(tmp_path / 'l.csv')
  paths = external.find_images(tmp_path / 'images', labelled.image_ids)
  assert [p.stem for p in paths] == IDS and paths[4].parent.name == 'part_2'


def test_isic_ground_truth_weights_as_the_official_scorer_reads_them(tmp_path):
  # No score_weight column: every row 1, but ISIC_0035068 (a duplicate) 0, as the scorer has it.
  write_isic_csv(tmp_path / 'gt.csv', IDS + ['ISIC_0035068'], DX + ['nv'])
  assert list(external.read_labels(tmp_path / 'gt.csv').score_weights) == [1.0] * 7 + [0.0]
  # A score_weight column (and validation_weight, which the headline score ignores) is read.
  header = 'image,' + ','.join(ISIC2018_COLUMNS) + ',score_weight,validation_weight'
  (tmp_path / 'w.csv').write_text(f'{header}\nISIC_1,1,0,0,0,0,0,0,0.0,1.0\n'
                                  f'ISIC_2,0,1,0,0,0,0,0,1.0,0.0\nISIC_0035068,0,1,0,0,0,0,0,1,1\n')
  assert list(external.read_labels(tmp_path / 'w.csv').score_weights) == [0.0, 1.0, 0.0]
  # HAM10000-style CSVs are not the scorer's format and carry no weights.
  write_ham_csv(tmp_path / 'l.csv', IDS, DX)
  assert external.read_labels(tmp_path / 'l.csv').score_weights is None


_WEIGHTED_HEADER = 'image,MEL,NV,BCC,AKIEC,BKL,DF,VASC,score_weight\n'


@pytest.mark.parametrize('content, message', [
    (_WEIGHTED_HEADER + 'ISIC_1,1,0,0,0,0,0,0,0.5\n',
     "score_weight of ISIC_1 is '0.5'; use 1 to score the row or 0 to leave it out"),
    (_WEIGHTED_HEADER + 'ISIC_1,1,0,0,0,0,0,0,\n', "score_weight of ISIC_1 is ''"),
    (_WEIGHTED_HEADER + 'ISIC_1,1,0,0,0,0,0,0,0\nISIC_0035068,1,0,0,0,0,0,0,1\n',
     'every row has score_weight 0'),
    ('image_id,dx\nISIC_1,melanoma\nISIC_2,nv\n', "outside the 7 ham10000 classes the model predicts: 'melanoma'"),
    ('name,label\na,mel\n', 'expected image_id,dx.*ISIC 2019'),
    ('image_id,dx\n', 'has no rows'),
    ('image_id,dx\nISIC_1,mel\nISIC_1,nv\n', 'more than once: ISIC_1'),
    ('image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0.5,0.5,0,0,0,0,0\n', 'not one-hot'),
    ('image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,x,1,0,0,0,0,0\n', 'not a number'),
])
def test_bad_label_csvs_say_what_is_wrong(tmp_path, content, message):
  (tmp_path / 'l.csv').write_text(content)
  with pytest.raises(external.ExternalDataError, match=message):
    external.read_labels(tmp_path / 'l.csv')


def test_unreadable_csv(tmp_path):
  with pytest.raises(external.ExternalDataError, match='Cannot read --labels_csv'):
    external.read_labels(tmp_path / 'missing.csv')
  (tmp_path / 'binary.csv').write_bytes(b'\xff\xfe\x00\x81' * 50)
  with pytest.raises(external.ExternalDataError, match='binary.csv'):
    external.read_labels(tmp_path / 'binary.csv')


def test_missing_and_unreadable_images(tmp_path):
  write_jpegs(tmp_path / 'images', IDS[:5])
  with pytest.raises(external.ExternalDataError, match=r'2 of 7 images .* ISIC_0000005, ISIC_0000006'):
    external.find_images(tmp_path / 'images', IDS)
  with pytest.raises(external.ExternalDataError, match='is not a folder'):
    external.find_images(tmp_path / 'nope', IDS)
  (tmp_path / 'images' / 'ISIC_0000005.jpg').write_bytes(b'not a jpeg')
  with pytest.raises(external.ExternalDataError, match='Cannot read .*ISIC_0000005.jpg as an image'):
    external.check_readable(external.find_images(tmp_path / 'images', IDS[:6]))


def test_collect_images_expands_folders(tmp_path):
  write_jpegs(tmp_path / 'a', ['x', 'y'])
  write_jpegs(tmp_path / 'b', ['z'])
  (tmp_path / 'a' / 'notes.txt').write_text('not an image')
  found = external.collect_images([tmp_path / 'b' / 'z.jpg', tmp_path / 'a'])
  assert [p.name for p in found] == ['z.jpg', 'x.jpg', 'y.jpg']
  with pytest.raises(external.ExternalDataError, match='No such image or folder'):
    external.collect_images([tmp_path / 'c.jpg'])
  (tmp_path / 'empty').mkdir()
  with pytest.raises(external.ExternalDataError, match='holds no'):
    external.collect_images([tmp_path / 'empty'])

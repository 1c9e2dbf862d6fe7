"""Images from outside the prepared dataset: an external labelled test set, or files to predict.

Labels come from one of three CSV formats:
  HAM10000 metadata style  image_id,dx[,lesion_id,...]   (dx in akiec, bcc, bkl, df, mel, nv, vasc)
  ISIC 2018 Task 3 truth   image,MEL,NV,BCC,AKIEC,BKL,DF,VASC   (one-hot floats)
  ISIC 2019 truth          image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK   (one-hot; AK is akiec, and
                           SCC/UNK rows, which have no HAM10000 class, must be dropped first)
Images are found by id in a folder (and its subfolders) as <id>.jpg, .jpeg or .png, any size: the
evaluation pipeline resizes them exactly as it does the run's own evaluation images.

The ISIC ground truths also carry the rows' weights as the official scorer, isic-challenge-scoring,
reads them (its load_csv.parse_truth_csv): an optional score_weight column (1.0 when absent), and
weight 0 for ISIC_0035068 whatever the file says.
"""

import csv
import dataclasses
import pathlib

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from skinjax.data.constants import (CLASS_NAMES, ISIC2018_COLUMNS, ISIC2019_COLUMNS,
                                    ISIC2019_TO_CLASS)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# isic-challenge-scoring sets this image's weight to 0 in every ground truth it reads: a duplicate
# within the ISIC 2018 Task 3 test set.
ISIC_SCORER_EXCLUDED = ('ISIC_0035068',)
_FORMATS_HELP = ('image_id,dx[,lesion_id] (HAM10000 metadata), '
                 f'image,{",".join(ISIC2018_COLUMNS)} (ISIC 2018 Task 3 ground truth) or '
                 f'image,{",".join(ISIC2019_COLUMNS)} (ISIC 2019 ground truth)')


class ExternalDataError(ValueError):
  """Bad external input; the message names the file and what to change."""


class ImageFiles:
  """Random-access source over image files, as the evaluation pipeline reads any source."""

  def __init__(self, paths, labels=None):
    self.paths = [pathlib.Path(p) for p in paths]
    self.labels = np.zeros(len(self.paths), np.int64) if labels is None else np.asarray(labels)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    # Encoded bytes, not pixels: the pipeline decodes with JPEG draft scaling, like prepared data.
    return {'image': self.paths[int(index)].read_bytes(), 'label': int(self.labels[int(index)])}


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  image_ids: np.ndarray
  labels: np.ndarray
  lesion_ids: np.ndarray | None  # known for HAM10000-style CSVs with a lesion_id column
  csv_format: str  # 'ham10000', 'isic2018' or 'isic2019'
  # ISIC ground truths only: 1.0 for a scored row, 0.0 for one the official scorer leaves out.
  score_weights: np.ndarray | None = None


def read_labels(csv_path) -> LabelledImages:
  """Parses either label format (told apart by the header) into class indices."""
  csv_path = pathlib.Path(csv_path).expanduser()
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      rows = list(csv.DictReader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as error:
    raise ExternalDataError(f'Cannot read --labels_csv {csv_path} ({error}); pass a CSV with '
                            f'{_FORMATS_HELP}.') from None
  if not rows:
    raise ExternalDataError(f'--labels_csv {csv_path} has no rows; it needs a header and one row '
                            f'per image: {_FORMATS_HELP}.')
  columns = {c.strip() for c in rows[0] if c}
  rows = [{(k or '').strip(): (v or '').strip() for k, v in row.items()} for row in rows]
  if {'image_id', 'dx'} <= columns:
    labelled = _ham10000_labels(rows, columns, csv_path)
  elif {'image', *ISIC2018_COLUMNS} <= columns:
    labelled = _one_hot_labels(rows, ISIC2018_COLUMNS, {c: c.lower() for c in ISIC2018_COLUMNS},
                               'isic2018', csv_path)
  elif {'image', *ISIC2019_COLUMNS} <= columns:
    labelled = _one_hot_labels(rows, ISIC2019_COLUMNS, ISIC2019_TO_CLASS, 'isic2019', csv_path)
  else:
    raise ExternalDataError(f'--labels_csv {csv_path} has columns {sorted(columns)}; expected '
                            f'{_FORMATS_HELP}.')
  ids, counts = np.unique(labelled.image_ids, return_counts=True)
  if (counts > 1).any():
    raise ExternalDataError(f'--labels_csv {csv_path} lists images more than once: '
                            f'{", ".join(ids[counts > 1][:5])}. Keep one row per image.')
  return labelled


def _strip_suffix(image_id: str) -> str:
  path = pathlib.PurePath(image_id)
  return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else image_id


def _ham10000_labels(rows, columns, csv_path) -> LabelledImages:
  dx = [row['dx'].lower() for row in rows]
  unknown = sorted(set(dx) - set(CLASS_NAMES))
  if unknown:
    raise ExternalDataError(
        f'--labels_csv {csv_path} has dx values outside the 7 HAM10000 classes: '
        f'{", ".join(map(repr, unknown[:5]))}; use {", ".join(CLASS_NAMES)} (drop or relabel '
        'those rows).')
  lesion_ids = None
  if 'lesion_id' in columns and all(row['lesion_id'] for row in rows):
    lesion_ids = np.array([row['lesion_id'] for row in rows])
  return LabelledImages(np.array([_strip_suffix(row['image_id']) for row in rows]),
                        np.array([CLASS_NAMES.index(d) for d in dx], np.int64), lesion_ids,
                        'ham10000')


def _one_hot_labels(rows, columns, column_to_class, csv_format, csv_path) -> LabelledImages:
  """ISIC-style one-hot ground truth; columns missing from `column_to_class` lack a HAM class."""
  extra_columns = [c for c in columns if c not in column_to_class]
  labels, outside, weights = [], [], []
  for row in rows:
    weights.append(_score_weight(row, csv_path))
    try:
      one_hot = np.array([float(row[c]) for c in columns])
    except ValueError:
      raise ExternalDataError(f'--labels_csv {csv_path}: the row of {row["image"]} has a value '
                              'that is not a number; ISIC ground truth holds 0.0 or 1.0 '
                              'in every class column.') from None
    if not (np.isin(one_hot, (0.0, 1.0)).all() and one_hot.sum() == 1.0):
      raise ExternalDataError(f'--labels_csv {csv_path}: the row of {row["image"]} is not one-hot '
                              f'({", ".join(row[c] for c in columns)}); give each image '
                              'exactly one 1.0.')
    column = columns[int(one_hot.argmax())]
    if column in extra_columns:
      outside.append(f'{row["image"]} ({column})')
    else:
      labels.append(CLASS_NAMES.index(column_to_class[column]))
  if outside:
    # Refused rather than skipped: silently scoring a subset would misstate the set's size.
    raise ExternalDataError(
        f'--labels_csv {csv_path}: {len(outside)} images are labelled with a class that '
        f'HAM10000 lacks, which the model cannot predict: {", ".join(outside[:3])}. Drop the '
        f'rows with a 1.0 in {"/".join(extra_columns)} and evaluate the rest.')
  image_ids = np.array([_strip_suffix(row['image']) for row in rows])
  weights = np.where(np.isin(image_ids, ISIC_SCORER_EXCLUDED), 0.0, np.array(weights))
  if not weights.any():
    raise ExternalDataError(f'--labels_csv {csv_path}: every row has score_weight 0, so nothing '
                            'would be scored; give the rows to score weight 1.')
  if not weights.all() and list(image_ids) != sorted(image_ids):
    # isic-challenge-scoring 5.6 sorts the truth's rows by image but not its weights
    # (ClassificationScore.from_stream), so on such a file it scores with misplaced weights.
    logging.warning('--labels_csv %s is not sorted by image and leaves rows out: the official '
                    'scorer would weight the wrong rows and give another figure; sort the file '
                    'by image to compare with it.', csv_path)
  return LabelledImages(image_ids, np.array(labels, np.int64), None, csv_format, weights)


def _score_weight(row, csv_path) -> float:
  """The row's score_weight (1.0 without the column), which must say in (1) or out (0)."""
  value = row.get('score_weight', '1')
  try:
    weight = float(value)
  except ValueError:
    weight = None
  if weight not in (0.0, 1.0):
    # The official scorer would weight a row by any number, but every ISIC ground truth uses 0
    # or 1, and a report of fractional weights would need every other metric reweighted too.
    raise ExternalDataError(f'--labels_csv {csv_path}: the score_weight of {row["image"]} is '
                            f'{value!r}; use 1 to score the row or 0 to leave it out.')
  return weight


def find_images(images_dir, image_ids) -> list[pathlib.Path]:
  """The file of each id in `images_dir` or below it; every id must have exactly one."""
  images_dir = pathlib.Path(images_dir).expanduser()
  if not images_dir.is_dir():
    raise ExternalDataError(f'--images_dir {images_dir} is not a folder; pass the folder that '
                            'holds the images named in --labels_csv.')
  by_id = {}
  for path in sorted(images_dir.rglob('*')):
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
      by_id.setdefault(path.stem, path)
  missing = [i for i in image_ids if i not in by_id]
  if missing:
    raise ExternalDataError(
        f'{len(missing)} of {len(image_ids)} images named in --labels_csv are not in '
        f'--images_dir {images_dir} (e.g. {", ".join(missing[:3])}); looked for '
        f'<id>{"/".join(IMAGE_SUFFIXES)} in it and its subfolders. Point --images_dir at them '
        'or drop their rows.')
  paths = [by_id[i] for i in image_ids]
  check_readable(paths)
  return paths


def collect_images(paths_or_dirs) -> list[pathlib.Path]:
  """Files as given, and the images inside each folder given (sorted, subfolders included)."""
  found = []
  for item in paths_or_dirs:
    path = pathlib.Path(item).expanduser()
    if path.is_dir():
      inside = sorted(p for p in path.rglob('*')
                      if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
      if not inside:
        raise ExternalDataError(f'The folder {path} holds no {"/".join(IMAGE_SUFFIXES)} images; '
                                'pass image files or a folder of them.')
      found += inside
    elif path.is_file():
      found.append(path)
    else:
      raise ExternalDataError(f'No such image or folder: {path}; check the path.')
  if not found:
    raise ExternalDataError('No images given; pass image files or folders after the flags.')
  check_readable(found)
  return found


def check_readable(paths):
  """Fails early, naming the file, rather than deep inside a pipeline worker."""
  for path in paths:
    try:
      with Image.open(path) as image:
        image.size  # noqa: B018 - the header is parsed on open; this just touches it
    except (OSError, UnidentifiedImageError):
      raise ExternalDataError(f'Cannot read {path} as an image; replace or remove it.') from None

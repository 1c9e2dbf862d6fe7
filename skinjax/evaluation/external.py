"""Images from outside the prepared dataset: an external labelled test set, or files to predict.

Labels are read in the classes of the model's training dataset (its DatasetDescription), from
one of these CSV formats:
  metadata style           image_id,dx[,lesion_id|patient_id,...]   (dx: a class of the model)
  ISIC one-hot truth       image,<class columns>[,score_weight]: ISIC 2018 Task 3
                           (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC), ISIC 2019 (image,MEL,...,SCC,UNK)
                           or any other; columns match classes by name (AK and AKIEC are one).
                           Rows of a class the model lacks (a HAM10000 model and SCC or UNK) are
                           refused by name, since the model cannot predict them.
  ISIC 2020 truth          image_name,...,target   (for a melanoma-against-benign model)
Images are found by id in a folder (and its subfolders) as <id>.jpg, .jpeg or .png, any size: the
evaluation pipeline resizes them exactly as it does the run's own evaluation images.

The ISIC one-hot ground truths also carry the rows' weights as the official scorer,
isic-challenge-scoring, reads them (its load_csv.parse_truth_csv): an optional score_weight column
(1.0 when absent), and weight 0 for ISIC_0035068 whatever the file says.
"""

import csv
import dataclasses
import pathlib

import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from skinjax.data import datasets

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
# isic-challenge-scoring sets this image's weight to 0 in every ground truth it reads: a duplicate
# within the ISIC 2018 Task 3 test set.
ISIC_SCORER_EXCLUDED = ('ISIC_0035068',)
# Per-row weights the ISIC ground truths carry beside their class columns.
WEIGHT_COLUMNS = ('score_weight', 'validation_weight')
_FORMATS_HELP = ('image_id,dx[,lesion_id] (metadata style), '
                 f'image,{",".join(datasets.ISIC2018_COLUMNS)} (ISIC 2018 Task 3 ground truth), '
                 f'image,{",".join(datasets.ISIC2019_COLUMNS)} (ISIC 2019 ground truth) or '
                 'image_name,...,target (ISIC 2020 ground truth)')


class ExternalDataError(ValueError):
  """Bad external input; the message names the file and what to change."""


class ImageFiles:
  """Random-access source over image files, as the evaluation pipeline reads any source.

  `metadata`: each image's CSV row ({column: value}), for a model that takes patient metadata.
  """

  def __init__(self, paths, labels=None, metadata=None):
    self.paths = [pathlib.Path(p) for p in paths]
    self.labels = np.zeros(len(self.paths), np.int64) if labels is None else np.asarray(labels)
    self.metadata = [{}] * len(self.paths) if metadata is None else list(metadata)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    # Encoded bytes, not pixels: the pipeline decodes with JPEG draft scaling, like prepared data.
    index = int(index)
    return {'image': self.paths[index].read_bytes(), 'label': int(self.labels[index]),
            'metadata': self.metadata[index]}


@dataclasses.dataclass(frozen=True)
class LabelledImages:
  image_ids: np.ndarray
  labels: np.ndarray  # indices into the model's classes
  groups: np.ndarray | None  # lesion_id or patient_id, when the CSV gives one for every row
  csv_format: str  # 'metadata', 'isic2018', 'isic2019', 'one_hot' or 'isic2020'
  # ISIC one-hot ground truths only: 1.0 for a scored row, 0.0 for one the scorer leaves out.
  score_weights: np.ndarray | None = None
  # Each row as read ({column: value}), where a model's patient metadata is looked for.
  rows: np.ndarray | None = None
  columns: tuple[str, ...] = ()

  def subset(self, keep: np.ndarray) -> 'LabelledImages':
    """The rows where the boolean `keep` is true."""
    return dataclasses.replace(
        self, image_ids=self.image_ids[keep], labels=self.labels[keep],
        groups=None if self.groups is None else self.groups[keep],
        score_weights=None if self.score_weights is None else self.score_weights[keep],
        rows=None if self.rows is None else self.rows[keep])


def read_labels(csv_path, description: datasets.DatasetDescription = datasets.HAM10000
                ) -> LabelledImages:
  """Parses any label format (told apart by the header) into indices of the model's classes."""
  csv_path = pathlib.Path(csv_path).expanduser()
  header, rows = _read_csv(csv_path, '--labels_csv', f'a CSV with {_FORMATS_HELP}')
  if not rows:
    raise ExternalDataError(f'--labels_csv {csv_path} has no rows; it needs a header and one row '
                            f'per image: {_FORMATS_HELP}.')
  header = [c for c in header if c]
  columns = set(header)
  if {'image_id', 'dx'} <= columns:
    labelled = _metadata_labels(rows, columns, csv_path, description)
  elif {'image_name', 'target'} <= columns:
    labelled = _isic2020_labels(rows, csv_path, description)
  elif 'image' in columns and len(columns - set(WEIGHT_COLUMNS) - {'image'}) >= 2:
    class_columns = [c for c in header if c not in (*WEIGHT_COLUMNS, 'image')]
    labelled = _one_hot_labels(rows, class_columns, _csv_format(class_columns), csv_path,
                               description)
  else:
    raise ExternalDataError(f'--labels_csv {csv_path} has columns {sorted(columns)}; expected '
                            f'{_FORMATS_HELP}.')
  ids, counts = np.unique(labelled.image_ids, return_counts=True)
  if (counts > 1).any():
    raise ExternalDataError(f'--labels_csv {csv_path} lists images more than once: '
                            f'{", ".join(ids[counts > 1][:5])}. Keep one row per image.')
  return dataclasses.replace(labelled, rows=_object_array(rows), columns=tuple(header))


def _object_array(items) -> np.ndarray:
  array = np.empty(len(items), dtype=object)
  array[:] = items
  return array


# The columns that name the image in a metadata CSV, in the order they are looked for.
IMAGE_ID_COLUMNS = ('image_id', 'image', 'image_name', 'isic_id')


def read_metadata(csv_path, paths) -> tuple[list[dict], tuple[str, ...]]:
  """Each image's row of a patient-metadata CSV (`image_id` or ISIC's `image`, `image_name`,
  `isic_id`, then e.g. age_approx, sex, anatom_site_general), matched by the file's name without
  suffix; and the CSV's columns. An image without a row is an error: a typo would otherwise
  predict it silently without its metadata."""
  csv_path = pathlib.Path(csv_path).expanduser()
  header, rows = _read_csv(csv_path, '--metadata',
                           'a CSV with an image_id column and the metadata columns')
  id_column = next((c for c in IMAGE_ID_COLUMNS if c in header), None)
  if id_column is None:
    raise ExternalDataError(f'--metadata {csv_path} has columns {list(header)}, none of which '
                            f'names the image: add one of {", ".join(IMAGE_ID_COLUMNS)}.')
  by_id = {_strip_suffix(row[id_column]): row for row in rows}
  ids = [pathlib.Path(p).stem for p in paths]
  missing = [image_id for image_id in ids if image_id not in by_id]
  if missing:
    raise ExternalDataError(
        f'--metadata {csv_path} has no row for {len(missing)} of the {len(ids)} images: '
        f'{", ".join(missing[:5])}{" ..." if len(missing) > 5 else ""}. Add their rows (empty '
        'values for what is unknown), or predict them without --metadata.')
  return [by_id[image_id] for image_id in ids], header


def _read_csv(csv_path: pathlib.Path, flag: str, expected: str) -> tuple[tuple[str, ...], list[dict]]:
  """(header, rows) of a CSV given by `flag`, names and values stripped of spaces."""
  try:
    with open(csv_path, newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      rows = [{(k or '').strip(): (v or '').strip() for k, v in row.items()} for row in reader]
      header = tuple((c or '').strip() for c in reader.fieldnames or ())
  except (OSError, UnicodeDecodeError, csv.Error) as error:
    raise ExternalDataError(f'Cannot read {flag} {csv_path} ({error}); pass {expected}.') from None
  return header, rows


def _csv_format(class_columns) -> str:
  return {frozenset(datasets.ISIC2018_COLUMNS): 'isic2018',
          frozenset(datasets.ISIC2019_COLUMNS): 'isic2019'}.get(frozenset(class_columns), 'one_hot')


def _strip_suffix(image_id: str) -> str:
  path = pathlib.PurePath(image_id)
  return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else image_id


def _metadata_labels(rows, columns, csv_path, description) -> LabelledImages:
  labels = [datasets.class_of(row['dx'], description) for row in rows]
  unknown = sorted({row['dx'] for row, label in zip(rows, labels) if label is None})
  if unknown:
    raise ExternalDataError(
        f'--labels_csv {csv_path} has dx values outside the {description.num_classes} '
        f'{description.name} classes the model predicts: {", ".join(map(repr, unknown[:5]))}; use '
        f'{", ".join(description.class_names)} (drop or relabel those rows).')
  groups = None
  for key in ('lesion_id', 'patient_id'):
    if key in columns and all(row[key] for row in rows):
      groups = np.array([row[key] for row in rows])
      break
  return LabelledImages(np.array([_strip_suffix(row['image_id']) for row in rows]),
                        np.array(labels, np.int64), groups, 'metadata')


def _isic2020_labels(rows, csv_path, description) -> LabelledImages:
  if not description.is_binary_melanoma:
    raise ExternalDataError(
        f'--labels_csv {csv_path} is an ISIC 2020 ground truth (melanoma or not), which scores a '
        f'melanoma-against-benign model; this one predicts {description.num_classes} '
        f'{description.name} classes. Evaluate it on a ground truth in its classes.')
  melanoma = description.melanoma_index
  labels = []
  for row in rows:
    if row['target'] not in ('0', '1', '0.0', '1.0'):
      raise ExternalDataError(f'--labels_csv {csv_path}: the target of {row["image_name"]} is '
                              f'{row["target"]!r}; use 1 for melanoma and 0 for benign.')
    labels.append(melanoma if float(row['target']) == 1 else 1 - melanoma)
  groups = (np.array([row['patient_id'] for row in rows])
            if all(row.get('patient_id') for row in rows) else None)
  return LabelledImages(np.array([_strip_suffix(row['image_name']) for row in rows]),
                        np.array(labels, np.int64), groups, 'isic2020')


def _one_hot_labels(rows, columns, csv_format, csv_path, description) -> LabelledImages:
  """ISIC-style one-hot ground truth; a column that matches none of the model's classes may only
  hold zeros."""
  class_of_column = {c: datasets.class_of(c, description) for c in columns}
  extra_columns = [c for c in columns if class_of_column[c] is None]
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
      labels.append(class_of_column[column])
  if outside:
    # Refused rather than skipped: silently scoring a subset would misstate the set's size.
    raise ExternalDataError(
        f'--labels_csv {csv_path}: {len(outside)} images are labelled with a class that '
        f'{description.name} lacks, which the model cannot predict: {", ".join(outside[:3])}. Drop '
        f'the rows with a 1.0 in {"/".join(extra_columns)} and evaluate the rest.')
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
  return [by_id[i] for i in image_ids]


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
  return found


def check_readable(paths, skip_bad_images: bool = False) -> tuple[np.ndarray, list[dict]]:
  """(which of `paths` decode, [{'image', 'reason'}] of the others), checked up front.

  Without `skip_bad_images` the first image that does not decode stops everything, naming the
  file: caught later, it would fail deep inside a pipeline thread with an error that names none.
  """
  readable, skipped = np.ones(len(paths), bool), []
  for i, path in enumerate(paths):
    reason = unreadable_reason(path)
    if reason is None:
      continue
    if not skip_bad_images:
      raise ExternalDataError(f'Cannot read {path} as an image ({reason}); replace or remove it, '
                              'or pass --skip_bad_images.')
    readable[i] = False
    skipped.append({'image': str(path), 'reason': reason})
  if len(paths) and not readable.any():
    raise ExternalDataError(f'None of the {len(paths)} images can be read as an image (e.g. '
                            f'{paths[0]}: {skipped[0]["reason"]}); replace them.')
  return readable, skipped


def unreadable_reason(path) -> str | None:
  """Why `path` cannot be decoded as the evaluation pipeline decodes it; None if it can.

  The image is decoded, not only its header parsed: a truncated JPEG or PNG has a valid header.
  JPEG draft mode decodes at 1/8 scale, which still reads the whole entropy-coded stream (so
  truncation is caught) while skipping most of the work of a full decode.
  """
  try:
    with Image.open(path) as image:
      image.draft('RGB', (1, 1))  # a no-op for other formats, which are decoded in full
      image.load()
  except UnidentifiedImageError:
    return 'the file is empty' if pathlib.Path(path).stat().st_size == 0 else (
        'not a JPEG, PNG or other image format PIL decodes')
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
    # A failed read (permission, a folder) has a strerror; a failed decode only a message.
    return getattr(error, 'strerror', None) or str(error) or type(error).__name__
  return None

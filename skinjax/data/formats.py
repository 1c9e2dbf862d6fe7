"""Reading a download in any supported format into labelled records and a dataset description.

  ham10000      the HAM10000 download, in any layout that ham10000_download.py reads
  isic_archive  what `isic image download OUT` (isic-cli) writes: OUT/<isic_id>.jpg and
                OUT/metadata.csv (isic_id, attribution, copyright_license, then the sorted union
                of the fields present: diagnosis_1..5 or the older diagnosis, lesion_id, ...)
  isic2019      ISIC_2019_Training_Input/, ISIC_2019_Training_GroundTruth.csv (one-hot) and
                ISIC_2019_Training_Metadata.csv
  isic2020      train/*.jpg and train.csv (image_name, patient_id, ..., target)
  csv           a folder of images and a CSV naming the image, label and group columns

Every format ends in the same checks (`_collect`): labels mapped and counted, one label per image,
at least two classes, each class spread over enough groups for the three splits, every listed
image present. Failures raise `DatasetError` naming the file and the fix, before anything is
written.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import pathlib
import re
from collections.abc import Sequence

from absl import logging

from skinjax.data import datasets
from skinjax.data import ham10000_download
from skinjax.data.storage import DatasetError, ImageFile

FORMATS = ('ham10000', 'isic_archive', 'isic2019', 'isic2020', 'csv')
# isic-cli keeps the archive's file type; PIL reads all of these.
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.tif', '.tiff', '.bmp', '.webp')
# Images per class the three splits need at least: one group each.
MIN_GROUPS_PER_CLASS = 3
_EXAMPLES = 5
# isic_archive columns that describe the file, not the patient or lesion.
_ARCHIVE_FILE_COLUMNS = ('isic_id', 'attribution', 'copyright_license')
MELANOMA_NAMES = ('mel', 'melanoma', 'melanoma, nos', 'malignant melanoma')


# What a user who lacks the download must do, where a format's download needs more than a hint.
DOWNLOAD_INSTRUCTIONS = {'ham10000': ham10000_download.MANUAL_DOWNLOAD_INSTRUCTIONS}


@dataclasses.dataclass(frozen=True)
class Options:
  """What the user said about the download (scripts/prepare_dataset.py's flags)."""
  name: str
  label_column: str | None = None
  label_map: str | None = None  # CSV of value,class; an empty class drops the value
  image_column: str | None = None
  group_column: str | None = None
  csv_path: str | None = None
  melanoma_class: str | None = None


@dataclasses.dataclass
class Collection:
  """Labelled records ready to be written, and what they are."""
  records: list[dict]  # image_id, dx (class name), group, metadata {column: str}
  images: dict[str, ImageFile]
  description: datasets.DatasetDescription
  labels_sha256: str  # of the label (and metadata) files as downloaded
  left_out: dict[str, int]  # why rows were left out -> how many


def read(format_name: str, manual_dir, options: Options, open_files: contextlib.ExitStack) -> Collection:
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    instructions = DOWNLOAD_INSTRUCTIONS.get(format_name)
    raise DatasetError(f'The manual directory {manual_dir} does not exist; pass the folder that '
                       f'holds the {format_name} download as --manual_dir.'
                       + (f'\n{instructions}' if instructions else ''))
  readers = {'ham10000': _read_ham10000, 'isic_archive': _read_isic_archive,
             'isic2019': _read_isic2019, 'isic2020': _read_isic2020, 'csv': _read_csv}
  if format_name not in readers:
    raise DatasetError(f'Unknown format {format_name!r}; use one of {", ".join(FORMATS)}.')
  return readers[format_name](manual_dir, options, open_files)


# ---------------------------------------------------------------------------------------
# The formats.


def _read_ham10000(manual_dir, options, open_files) -> Collection:
  download = ham10000_download.scan_manual_dir(manual_dir, open_files)
  rows = ham10000_download.read_metadata(download.metadata_text, download.metadata_location)
  ham10000_download.check_images_match_metadata(rows, download.images, manual_dir)
  metadata_columns = datasets.HAM10000.metadata_columns
  table = [{'image_id': r['image_id'], 'label': r['dx'], 'lesion_id': r['lesion_id'],
            'metadata': {c: _text(r[c]) for c in metadata_columns}} for r in rows]
  return _collect(table, download.images, options, 'ham10000', download.metadata_location,
                  download.metadata_sha256, group_keys=('lesion_id',),
                  class_order=datasets.HAM10000.class_names, metadata_columns=metadata_columns,
                  challenge_columns=datasets.ISIC2018_COLUMNS, challenge_name='isic2018')


def _read_isic_archive(manual_dir, options, open_files) -> Collection:
  path = os.path.join(manual_dir, 'metadata.csv')
  if not os.path.isfile(path):
    raise DatasetError(f'{manual_dir} has no metadata.csv, so it is not an ISIC archive download. '
                       'Download with the official CLI (pip install isic-cli; isic image download '
                       'OUT) and pass OUT as --manual_dir.')
  header, rows, sha = _read_table(path)
  _require(header, ['isic_id'], path, 'an isic-cli metadata.csv starts with isic_id')
  label_column = options.label_column or _default_archive_label(header, path)
  _require(header, [label_column], path, '--label_column must name one of its columns')
  metadata_columns = tuple(c for c in header if c not in (*_ARCHIVE_FILE_COLUMNS, label_column))
  table = [{'image_id': row['isic_id'], 'label': row[label_column],
            'lesion_id': row.get('lesion_id', ''), 'patient_id': row.get('patient_id', ''),
            'metadata': {c: row[c] for c in metadata_columns}} for row in rows]
  images = find_images(manual_dir)
  return _collect(table, images, options, 'isic_archive', path, sha,
                  group_keys=('lesion_id', 'patient_id'), metadata_columns=metadata_columns)


def _default_archive_label(header: Sequence[str], path: str) -> str:
  if 'diagnosis' in header:  # downloads from before the archive's five-level diagnoses
    return 'diagnosis'
  levels = [c for c in header if re.fullmatch(r'diagnosis_\d', c)]
  raise DatasetError(f'{path} has no diagnosis column; pick the label with --label_column, e.g. '
                     f'one of {", ".join(levels) or "its columns: " + ", ".join(header)} '
                     '(diagnosis_3 names the diagnosis, e.g. "Melanoma, NOS").')


def _read_isic2019(manual_dir, options, open_files) -> Collection:
  truth_path = _find_file(manual_dir, 'ISIC_2019_Training_GroundTruth.csv')
  header, rows, sha = _read_table(truth_path)
  _require(header, ['image', 'MEL', 'NV'], truth_path,
           'ISIC 2019 ground truth is image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK')
  class_columns = [c for c in header if c != 'image' and c != 'score_weight']
  metadata_by_image, metadata_columns = {}, ()
  metadata_path = _find_file(manual_dir, 'ISIC_2019_Training_Metadata.csv', required=False)
  if metadata_path:
    meta_header, meta_rows, meta_sha = _read_table(metadata_path)
    _require(meta_header, ['image'], metadata_path, 'ISIC 2019 metadata starts with image')
    metadata_columns = tuple(c for c in meta_header if c not in ('image', 'lesion_id'))
    metadata_by_image = {row['image']: row for row in meta_rows}
    sha = hashlib.sha256((sha + meta_sha).encode()).hexdigest()
  else:
    logging.warning('No ISIC_2019_Training_Metadata.csv in %s: every image is its own group, so '
                    'images of one lesion may land in different splits.', manual_dir)
  table = []
  for number, row in enumerate(rows, start=2):
    label = _one_hot_column(row, class_columns, truth_path, number, row['image'])
    extra = metadata_by_image.get(row['image'], {})
    table.append({'image_id': row['image'], 'label': label.lower(),
                  'lesion_id': extra.get('lesion_id', ''),
                  'metadata': {c: extra.get(c, '') for c in metadata_columns}})
  empty = [c for c in class_columns if not any(r['label'] == c.lower() for r in table)]
  if empty:
    # UNK ("none of the others") has no training image: no class can be learnt from nothing.
    logging.info('Classes without images, left out: %s', ', '.join(empty))
  order = tuple(c.lower() for c in class_columns if c not in empty)
  return _collect(table, find_images(manual_dir), options, 'isic2019', truth_path, sha,
                  group_keys=('lesion_id',), class_order=order, metadata_columns=metadata_columns,
                  challenge_columns=datasets.ISIC2019_COLUMNS, challenge_name='isic2019')


def _read_isic2020(manual_dir, options, open_files) -> Collection:
  truth_path = _find_file(manual_dir, 'train.csv')
  header, rows, sha = _read_table(truth_path)
  _require(header, ['image_name', 'patient_id', 'target'], truth_path,
           'ISIC 2020 train.csv is image_name,patient_id,sex,age_approx,'
           'anatom_site_general_challenge,diagnosis,benign_malignant,target')
  metadata_columns = tuple(c for c in header if c not in ('image_name', 'patient_id', 'target'))
  table = []
  for number, row in enumerate(rows, start=2):
    if row['target'] not in ('0', '1'):
      raise DatasetError(f'{truth_path} row {number} ({row["image_name"]}): target is '
                         f'{row["target"]!r}; ISIC 2020 uses 1 for melanoma and 0 for benign.')
    table.append({'image_id': row['image_name'],
                  'label': 'melanoma' if row['target'] == '1' else 'benign',
                  'patient_id': row['patient_id'],
                  'metadata': {c: row[c] for c in metadata_columns}})
  images = find_images(manual_dir)
  return _collect(table, images, options, 'isic2020', truth_path, sha, group_keys=('patient_id',),
                  class_order=('benign', 'melanoma'), metadata_columns=metadata_columns,
                  challenge=datasets.Challenge('isic2020', 'image_name', ('target',),
                                               {'target': 'melanoma'}))


def _read_csv(manual_dir, options, open_files) -> Collection:
  path = options.csv_path or _only_csv(manual_dir)
  header, rows, sha = _read_table(path)
  image_column = options.image_column or 'image'
  label_column = options.label_column or 'label'
  _require(header, [image_column], path, 'name the image column with --image_column')
  _require(header, [label_column], path, 'name the label column with --label_column')
  group_column = options.group_column
  if group_column:
    _require(header, [group_column], path, 'name the group column with --group_column')
    if not any(row[group_column] for row in rows):
      raise DatasetError(f'{path}: the group column {group_column!r} is empty in every row, so it '
                         'cannot keep images of one lesion together. Fill it in, or leave out '
                         '--group_column to split image by image (which may leak lesions).')
  elif 'lesion_id' in header or 'patient_id' in header:
    group_column = 'lesion_id' if 'lesion_id' in header else 'patient_id'
  # The user's group column plays the role of the key it stands for.
  group_key = None if not group_column else ('patient_id' if 'patient' in group_column.lower()
                                             else 'lesion_id')
  used = {image_column, label_column, group_column}
  metadata_columns = tuple(c for c in header if c not in used)
  table = []
  for row in rows:
    record = {'image_id': _strip_suffix(row[image_column]), 'label': row[label_column],
              'metadata': {c: row[c] for c in metadata_columns}}
    if group_key:
      record[group_key] = row[group_column]
    table.append(record)
  return _collect(table, find_images(manual_dir), options, 'csv', path, sha,
                  group_keys=(group_key,) if group_key else (), metadata_columns=metadata_columns)


# ---------------------------------------------------------------------------------------
# What every format shares.


def _collect(table: list[dict], images: dict[str, ImageFile], options: Options, format_name: str,
             location: str, sha: str, *, group_keys: Sequence[str], metadata_columns: Sequence[str],
             class_order: Sequence[str] | None = None, challenge_columns: Sequence[str] = (),
             challenge_name: str = '', challenge: datasets.Challenge | None = None) -> Collection:
  left_out = collections.Counter()
  label_map = _read_label_map(options.label_map) if options.label_map else None
  kept = []
  for row in table:
    label = row['label'].strip()
    if label_map is not None and label in label_map:
      label = label_map[label]
      if not label:
        left_out['dropped by --label_map'] += 1
        continue
    if not label:
      left_out['no label'] += 1
      continue
    kept.append({**row, 'label': label})
  if not kept:
    raise DatasetError(f'{location}: no row has a label ({dict(left_out)}); check --label_column'
                       ' and --label_map.')
  kept = _one_row_per_image(kept, location)
  group_key = _group_key(kept, group_keys, location)
  records = [{'image_id': r['image_id'], 'dx': r['label'],
              'group': r.get(group_key) or '' if group_key != 'image' else '',
              'metadata': r['metadata']} for r in kept]
  for record in records:  # no lesion_id (ISIC 2019's BCN and MSK parts): its own group
    record['group'] = record['group'] or f'image:{record["image_id"]}'
  present = sorted({r['dx'] for r in records})
  if class_order is not None:
    unknown = [c for c in present if c not in class_order]
    if unknown and label_map is None:
      raise DatasetError(f'{location} has labels {unknown} outside the {format_name} classes '
                         f'{list(class_order)}; fix those rows or map them with --label_map.')
    # The format's own order, then classes that --label_map made, alphabetically.
    class_names = tuple(c for c in class_order if c in present) + tuple(unknown)
  else:
    class_names = tuple(present)  # alphabetical, as HAM10000's labels are
  _check_classes(records, class_names, location)
  _check_images_present(records, images, location)
  melanoma = _melanoma(class_names, options.melanoma_class)
  if challenge is None and challenge_columns:
    challenge = datasets.challenge_for(challenge_name, class_names, challenge_columns)
  description = datasets.DatasetDescription(
      name=options.name, format=format_name, class_names=class_names, melanoma=melanoma,
      group_key=group_key, metadata_columns=tuple(metadata_columns), challenge=challenge)
  for reason, count in left_out.items():
    logging.warning('Left out %d rows of %s: %s.', count, location, reason)
  return Collection(records, images, description, sha, dict(left_out))


def _check_images_present(records: list[dict], images: dict, location: str) -> None:
  missing = [r['image_id'] for r in records if r['image_id'] not in images]
  if missing:
    raise DatasetError(f'{len(missing)} of the {len(records)} images that {location} labels are not '
                       f'in the manual directory, e.g. {", ".join(missing[:_EXAMPLES])} (looked for '
                       f'<image>{"/".join(IMAGE_SUFFIXES)} in it and its subfolders). Download them, '
                       'or remove their rows.')
  unlisted = len(images.keys() - {r['image_id'] for r in records})
  if unlisted:
    logging.info('%d images in the manual directory have no labelled row; they are left out.',
                 unlisted)


def _one_row_per_image(rows: list[dict], location: str) -> list[dict]:
  labels = collections.defaultdict(set)
  for row in rows:
    labels[row['image_id']].add(row['label'])
  conflicting = {i: sorted(v) for i, v in labels.items() if len(v) > 1}
  if conflicting:
    shown = '; '.join(f'{i}: {", ".join(v)}' for i, v in list(conflicting.items())[:_EXAMPLES])
    raise DatasetError(f'{location} lists {len(conflicting)} images twice with different labels '
                       f'({shown}). Keep one row per image with its right label.')
  seen, unique = set(), []
  for row in rows:
    if row['image_id'] not in seen:
      seen.add(row['image_id'])
      unique.append(row)
  if len(unique) < len(rows):
    logging.warning('%s lists %d images twice with the same label; each is kept once.', location,
                    len(rows) - len(unique))
  return unique


def _group_key(rows: list[dict], candidates: Sequence[str], location: str) -> str:
  for key in candidates:
    if any(row.get(key) for row in rows):
      return key
  logging.warning('%s gives no lesion_id or patient_id: each image is its own group, so images of '
                  'one lesion may land in different splits (the test score may be optimistic).',
                  location)
  return 'image'


def _check_classes(records: list[dict], class_names: Sequence[str], location: str) -> None:
  if len(class_names) < 2:
    raise DatasetError(f'{location} has only one class ({", ".join(class_names)}); a classifier '
                       'needs at least two. Check --label_column, or --label_map if it merged them.')
  groups = collections.defaultdict(set)
  for record in records:
    groups[record['dx']].add(record['group'])
  few = {c: len(groups[c]) for c in class_names if len(groups[c]) < MIN_GROUPS_PER_CLASS}
  if few:
    shown = ', '.join(f'{c} ({n})' for c, n in few.items())
    raise DatasetError(f'{location}: the classes {shown} have fewer than {MIN_GROUPS_PER_CLASS} '
                       'lesions/patients, too few to appear in the train, val and test splits. '
                       'Add images of them, or merge or drop them with --label_map.')


def _melanoma(class_names: Sequence[str], asked: str | None) -> str | None:
  if asked:
    if asked not in class_names:
      raise DatasetError(f'--melanoma_class={asked!r} is not one of the classes '
                         f'{", ".join(class_names)}.')
    return asked
  found = [c for c in class_names if c.lower() in MELANOMA_NAMES]
  return found[0] if len(found) == 1 else None


def _read_label_map(path: str) -> dict[str, str]:
  """value,class rows (a header row `value,class` is optional); an empty class drops the value."""
  header, rows, _ = _read_table(path, header_required=False)
  mapping = {}
  for number, row in enumerate(rows, start=1):
    if len(row) < 2 or row[0] == '':
      raise DatasetError(f'--label_map {path} row {number} is {row!r}; each row is value,class '
                         '(an empty class drops that value).')
    if number == 1 and [c.strip().lower() for c in row[:2]] == ['value', 'class']:
      continue
    mapping[row[0].strip()] = row[1].strip()
  return mapping


def _one_hot_column(row: dict, columns: Sequence[str], path: str, number: int, image: str) -> str:
  try:
    values = [float(row[c]) for c in columns]
  except ValueError:
    raise DatasetError(f'{path} row {number} ({image}) has a value that is not a number; the '
                       'ground truth holds 0.0 or 1.0 in each class column.') from None
  if sorted(values) != [0.0] * (len(values) - 1) + [1.0]:
    raise DatasetError(f'{path} row {number} ({image}) is not one-hot; give each image exactly '
                       'one 1.0.')
  return columns[values.index(1.0)]


def _read_table(path, header_required: bool = True):
  """(header, rows as dicts -- or lists without a header --, sha256 of the bytes)."""
  try:
    data = pathlib.Path(path).expanduser().read_bytes()
    text = data.decode('utf-8-sig')  # spreadsheet tools add a BOM
  except (OSError, UnicodeDecodeError) as error:
    raise DatasetError(f'Cannot read {path} ({error}); pass a UTF-8 CSV file.') from None
  sha = hashlib.sha256(data).hexdigest()
  if not header_required:
    return None, [r for r in csv.reader(io.StringIO(text)) if r], sha
  reader = csv.DictReader(io.StringIO(text))
  header = [c.strip() for c in reader.fieldnames or []]
  if not header:
    raise DatasetError(f'{path} is empty; it needs a header row and one row per image.')
  reader.fieldnames = header
  rows = []
  for number, row in enumerate(reader, start=2):
    if None in row or None in row.values():
      raise DatasetError(f'{path} row {number} has another number of fields than the header '
                         f'({len(header)}); quote values that hold commas.')
    rows.append({k: (v or '').strip() for k, v in row.items()})
  return header, rows, sha


def _require(header: Sequence[str], columns: Sequence[str], path, hint: str) -> None:
  missing = [c for c in columns if c not in header]
  if missing:
    raise DatasetError(f'{path} has no column {", ".join(missing)} (its columns: '
                       f'{", ".join(header)}); {hint}.')


def _find_file(manual_dir: str, name: str, required: bool = True) -> str | None:
  for root, _, files in sorted(os.walk(manual_dir)):
    if name in files:
      return os.path.join(root, name)
  if required:
    raise DatasetError(f'No {name} in {manual_dir} or its subfolders; put the downloaded file '
                       'there (unzipped).')
  return None


def _only_csv(manual_dir: str) -> str:
  found = sorted(p for p in os.listdir(manual_dir) if p.lower().endswith('.csv'))
  if len(found) != 1:
    raise DatasetError(f'{manual_dir} holds {len(found)} CSV files ({", ".join(found) or "none"}); '
                       'name the labels file with --csv.')
  return os.path.join(manual_dir, found[0])


def find_images(manual_dir: str) -> dict[str, ImageFile]:
  """Image files by name without suffix, anywhere below manual_dir (first copy wins)."""
  images = {}
  for root, dirs, files in os.walk(manual_dir):
    dirs.sort()
    for name in sorted(files):
      stem, suffix = os.path.splitext(name)
      if suffix.lower() in IMAGE_SUFFIXES and stem not in images:
        path = os.path.join(root, name)
        images[stem] = ImageFile(path, lambda p=path: pathlib.Path(p).read_bytes())
  return images


def _strip_suffix(image: str) -> str:
  stem, suffix = os.path.splitext(os.path.basename(image))
  return stem if suffix.lower() in IMAGE_SUFFIXES else image


def _text(value) -> str:
  return '' if value is None or value != value else str(value)  # NaN ages become ''

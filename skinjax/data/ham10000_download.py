"""Reading the HAM10000 download as people actually have it: Kaggle folders, a flat folder, zips.

`formats.read('ham10000', ...)` turns what this finds into labelled records, as it does for every
other format. This module knows HAM10000's files: it finds the metadata CSV and the images in any
of the layouts below (images inside zips are read lazily, one at a time), checks the metadata
and its labels against the images, and fails with a `DatasetError` that names the file and says
what to do, before anything is written.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np

from skinjax.data.constants import CLASS_NAMES, METADATA_COLUMNS
from skinjax.data.storage import DatasetError, ImageFile

_METADATA_NAME = re.compile(r'ham10000_metadata(\.csv|\.tab)?', re.IGNORECASE)
_IMAGE_NAME = re.compile(r'(ISIC_\d+)\.jpe?g', re.IGNORECASE)
_PART_DIR_NAME = re.compile(r'ham10000_images_part_\d+', re.IGNORECASE)
_EXAMPLES_IN_ERRORS = 5

EXPECTED_LAYOUTS = """\
  (a) Kaggle folders: HAM10000_metadata.csv, HAM10000_images_part_1/, HAM10000_images_part_2/
      (the lowercase ham10000_images_part_*/ copies are accepted too);
  (b) a flat folder: HAM10000_metadata.csv next to all the ISIC_*.jpg files;
  (c) the downloaded zip file(s), not extracted: the Kaggle archive.zip or
      skin-cancer-mnist-ham10000.zip, or the Dataverse HAM10000_images_part_*.zip next to
      HAM10000_metadata.csv (zips nested inside a zip are read too)."""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
HAM10000 has to be downloaded by hand (its licence, CC BY-NC-SA 4.0, requires accepting terms).
Get it from either:
  * the Harvard Dataverse, doi:10.7910/DVN/DBW86T
    (https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/DBW86T), or
  * Kaggle, kmader/skin-cancer-mnist-ham10000
    (https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000).
Put the files in the manual directory in one of these layouts:
{EXPECTED_LAYOUTS}
"""


# ---------------------------------------------------------------------------------------
# Finding the files of a download.


@dataclasses.dataclass
class ManualDownload:
  metadata_location: str
  metadata_text: str
  metadata_sha256: str  # Of the file's bytes as downloaded.
  images: dict[str, ImageFile]  # image_id -> file
  layouts: list[str]


def scan_manual_dir(manual_dir: str | os.PathLike, open_files: contextlib.ExitStack) -> ManualDownload:
  """Finds the metadata and the images in any of the expected layouts.

  Zip files stay open in `open_files` so that images are read lazily, one at a time.
  """
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise DatasetError(
        f'The manual directory {manual_dir} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  if not os.listdir(manual_dir):
    raise DatasetError(f'The manual directory {manual_dir} is empty.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
  metadata_files: list[tuple[str, Callable[[], bytes]]] = []
  images: dict[str, ImageFile] = {}
  layouts: list[str] = []
  ignored_duplicates = 0

  def add_image(image_id: str, image_file: ImageFile) -> None:
    nonlocal ignored_duplicates
    # The Kaggle archive holds every image twice (HAM10000_images_part_* and
    # ham10000_images_part_*): keep the first copy.
    if image_id in images:
      ignored_duplicates += 1
    else:
      images[image_id] = image_file

  def scan_zip(archive: zipfile.ZipFile, archive_location: str, nested: bool) -> None:
    for member in archive.infolist():
      if member.is_dir():
        continue
      basename = member.filename.rsplit('/', 1)[-1]
      location = f'{archive_location}:{member.filename}'
      read = lambda name=member.filename: archive.read(name)
      if _METADATA_NAME.fullmatch(basename):
        metadata_files.append((location, read))
      elif match := _IMAGE_NAME.fullmatch(basename):
        add_image(match.group(1), ImageFile(location, read))
      elif basename.lower().endswith('.zip') and not nested:
        # zipfile must seek, and seeking backwards inside a compressed member restarts its
        # decompression: copy the inner archive (not the images) to an anonymous temp file.
        spooled = open_files.enter_context(tempfile.TemporaryFile())
        try:
          with archive.open(member) as inner:
            shutil.copyfileobj(inner, spooled, length=1 << 22)
        except (OSError, zipfile.BadZipFile, zlib.error) as e:
          raise _unreadable(location, e) from None
        scan_zip(_open_zip(spooled, location, open_files), location, nested=True)

  entries = sorted(os.scandir(manual_dir), key=lambda entry: entry.name)
  for entry in entries:
    if entry.is_file() and _METADATA_NAME.fullmatch(entry.name):
      metadata_files.append((entry.path, lambda path=entry.path: _read_file(path)))
    elif entry.is_dir() and _PART_DIR_NAME.fullmatch(entry.name):
      for image_entry in sorted(os.scandir(entry.path), key=lambda e: e.name):
        if match := _IMAGE_NAME.fullmatch(image_entry.name):
          add_image(match.group(1), ImageFile(image_entry.path, lambda p=image_entry.path: _read_file(p)))
      _note(layouts, 'Kaggle folders')
    elif entry.is_file() and (match := _IMAGE_NAME.fullmatch(entry.name)):
      add_image(match.group(1), ImageFile(entry.path, lambda p=entry.path: _read_file(p)))
      _note(layouts, 'flat folder')
    elif entry.is_file() and entry.name.lower().endswith('.zip'):
      scan_zip(_open_zip(entry.path, entry.path, open_files), entry.path, nested=False)
      _note(layouts, 'zip archive')

  if not images or not metadata_files:
    found = ', '.join(e.name + ('/' if e.is_dir() else '') for e in entries[:20]) or 'nothing'
    missing = 'no ISIC_*.jpg images' if not images else 'no HAM10000_metadata.csv'
    raise DatasetError(f'Found {missing} in {manual_dir}. It contains: {found}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
  if ignored_duplicates:
    logging.info('Ignored %d duplicate image files (same image_id in two places).', ignored_duplicates)
  metadata_location, metadata_bytes = _choose_metadata(metadata_files)
  logging.info('Reading HAM10000 from %s (%s): %d images, metadata %s',
               manual_dir, ', '.join(layouts), len(images), metadata_location)
  return ManualDownload(metadata_location, _decode_metadata(metadata_bytes, metadata_location),
                        hashlib.sha256(metadata_bytes).hexdigest(), images, layouts)


def _open_zip(file, location: str, open_files: contextlib.ExitStack) -> zipfile.ZipFile:
  try:
    return open_files.enter_context(zipfile.ZipFile(file))
  except (OSError, zipfile.BadZipFile) as e:
    raise DatasetError(
        f'{location} is not a readable zip file ({e}). It is probably an incomplete download: '
        'download it again, or remove it from the manual directory.'
    ) from None


def _unreadable(location: str, error: Exception) -> DatasetError:
  return DatasetError(
      f'Cannot read {location}: {error}. The download is damaged: download that file again.'
  )


def _note(layouts: list[str], layout: str) -> None:
  if layout not in layouts:
    layouts.append(layout)


def _read_file(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _choose_metadata(metadata_files: Sequence[tuple[str, Callable[[], bytes]]]) -> tuple[str, bytes]:
  """Several copies are fine (e.g. the CSV next to the zip and inside it) as long as they agree."""
  contents = {location: read() for location, read in metadata_files}
  if len(set(contents.values())) > 1:
    raise DatasetError(
        'Found several different metadata files: ' + ', '.join(contents) +
        '. Keep only the original HAM10000_metadata.csv in the manual directory.'
    )
  return next(iter(contents.items()))


def _decode_metadata(content: bytes, location: str) -> str:
  try:
    return content.decode('utf-8-sig')  # Tolerate the BOM that spreadsheet tools add.
  except UnicodeDecodeError as e:
    raise DatasetError(
        f'{location} is not a UTF-8 text file ({e}). Use the original HAM10000_metadata.csv.'
    ) from None


# ---------------------------------------------------------------------------------------
# Checking the metadata against the images.


def read_metadata(text: str, location: str) -> list[dict]:
  """Parses and validates the metadata CSV: one dict per image, in file order."""
  # Dataverse serves the metadata as tab-separated `.tab`; everyone else as CSV.
  delimiter = '\t' if location.lower().endswith('.tab') else ','
  reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
  columns = [c.strip() for c in reader.fieldnames or []]
  missing = [c for c in METADATA_COLUMNS if c not in columns]
  if missing:
    hint = ''
    if len(columns) == 1 and any(sep in columns[0] for sep in ';\t'):
      hint = ' It looks separated by something else than commas (a spreadsheet export?).'
    raise DatasetError(
        f'{location} lacks the columns {missing}; its header is {columns}.{hint} Expected the columns '
        f'{list(METADATA_COLUMNS)}: use the original HAM10000_metadata.csv from the download.'
    )
  reader.fieldnames = columns
  records, row_numbers, problems = [], [], []
  for row_number, row in enumerate(reader, start=2):  # Row 1 is the header.
    # DictReader pads a short row with None and gathers the fields of a long one under None:
    # both mean the columns are shifted, e.g. a truncated download or an unquoted comma.
    if None in row or None in row.values():
      num_fields = len(columns) - list(row.values()).count(None) + len(row.get(None) or ())
      problems.append(f'row {row_number}: {num_fields} fields where the header has {len(columns)}')
      continue
    record = {c: (row[c] or '').strip() for c in METADATA_COLUMNS}
    if not record['image_id'] or not record['lesion_id']:
      problems.append(f'row {row_number}: empty image_id or lesion_id')
    age = record['age']
    try:
      record['age'] = np.float32(age) if age else np.float32('nan')
    except ValueError:
      problems.append(f'row {row_number}: age {age!r} is not a number')
    records.append(record)
    row_numbers.append(row_number)
  if problems:
    raise DatasetError(
        f'{location} has {len(problems)} malformed rows: ' + '; '.join(problems[:_EXAMPLES_IN_ERRORS]) +
        '. Use the original HAM10000_metadata.csv from the download.'
    )
  if not records:
    raise DatasetError(f'{location} has a header but no rows. Use the original HAM10000_metadata.csv.')

  rows_of_dx = _rows_by(records, row_numbers, 'dx')
  unknown = {dx: rows for dx, rows in rows_of_dx.items() if dx not in CLASS_NAMES}
  if unknown:
    raise DatasetError(
        f'{location} has unknown dx labels {dict((dx, len(rows)) for dx, rows in unknown.items())} '
        f'({_where(unknown)}); the HAM10000 labels are {list(CLASS_NAMES)}. Fix or remove those '
        'rows, or use the original metadata file.'
    )
  duplicates = {image_id: rows for image_id, rows in _rows_by(records, row_numbers, 'image_id').items()
                if len(rows) > 1}
  if duplicates:
    raise DatasetError(
        f'{location} lists {len(duplicates)} image_id values more than once: {_where(duplicates)}. '
        'Each image must have exactly one row: remove the duplicated rows, or use the original '
        'metadata file.'
    )
  return records


def _rows_by(records: Sequence[dict], row_numbers: Sequence[int], key: str) -> dict[str, list[int]]:
  rows = collections.defaultdict(list)
  for record, row_number in zip(records, row_numbers):
    rows[record[key]].append(row_number)
  return rows


def _where(rows_of_value: dict[str, list[int]]) -> str:
  """Where the first few values are, e.g. `'x' in rows 3, 9; 'y' in row 5`, for error messages."""
  shown = []
  for value, rows in sorted(rows_of_value.items())[:_EXAMPLES_IN_ERRORS]:
    numbers = ', '.join(map(str, rows[:_EXAMPLES_IN_ERRORS]))
    numbers += ', ...' if len(rows) > _EXAMPLES_IN_ERRORS else ''
    shown.append(f'{value!r} in row{"s" if len(rows) > 1 else ""} {numbers}')
  more = len(rows_of_value) - len(shown)
  return '; '.join(shown) + (f'; and {more} more' if more > 0 else '')


def check_images_match_metadata(records: Sequence[dict], images: dict[str, ImageFile], manual_dir: str) -> None:
  listed = {r['image_id'] for r in records}
  missing = sorted(listed - images.keys())
  if missing:
    raise DatasetError(
        f'{len(missing)} images listed in the metadata are missing from {manual_dir}, e.g. '
        f'{missing[:_EXAMPLES_IN_ERRORS]}. The download is incomplete: download both image parts '
        f'again.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  unlisted = sorted(images.keys() - listed)
  if unlisted:
    # Harmless for training (they have no label), but worth knowing about.
    logging.warning('Ignoring %d images in %s that the metadata does not list, e.g. %s',
                    len(unlisted), manual_dir, unlisted[:_EXAMPLES_IN_ERRORS])

"""TFDS builder for HAM10000, read from the user's own download (manual download).

The builder writes ArrayRecord and hands TFDS encoded JPEG bytes, so that neither
preparing nor reading the dataset needs TensorFlow. Each builder config stores the
images with a given short side (`config_for(256)` -> config `short256`), resized once
at prepare time so that training decodes small JPEGs.

It reads any of the layouts that people actually download (see `MANUAL_DOWNLOAD_INSTRUCTIONS`),
checks the metadata against the images, and fails with a `Ham10000Error` that names the
file and says what to do, before anything half-written is left behind. With
`skip_bad_images=True` an unreadable image is left out instead, and listed in `skipped.csv`.

What it read is recorded in the DatasetInfo metadata (`metadata.json`, see `CONTENTS_KEYS`):
the sha256 of the metadata CSV and the number of examples per class, so that a trainer can
tell two prepared datasets apart without reading their images.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import dataclasses
import functools
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
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from skinjax.data import datasets
from skinjax.data.constants import CLASS_NAMES, METADATA_COLUMNS

DEFAULT_SHORT_SIDE = 256
JPEG_QUALITY = 95
# Written next to the ArrayRecord files once they are final: image_id, lesion_id, dx and
# label in source order, so that computing splits never has to read the images.
METADATA_FILENAME = 'metadata.csv'
# Images left out with skip_bad_images, written next to the ArrayRecord files: image_id, path, reason.
SKIPPED_FILENAME = 'skipped.csv'
# What `_generate_examples` records in `builder.info.metadata` (TFDS writes it as metadata.json,
# inside its incomplete dir: it becomes visible together with the data, never without it).
CONTENTS_KEYS = ('metadata_sha256', 'class_counts', 'skipped_images')

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


class Ham10000Error(ValueError):
  """The manual download is missing, incomplete or inconsistent; the message says how to fix it."""


class BadImageError(Ham10000Error):
  """One image cannot be read or decoded: fatal, unless the builder skips bad images."""

  def __init__(self, location: str, action: str, error: Exception):
    super().__init__(
        f'Cannot {action} the image {location}: {error}. The file is corrupt or truncated: '
        'download it again (or the image part that holds it), or prepare with --skip_bad_images '
        'to leave such images out (they are then listed in skipped.csv).'
    )
    self.location = location
    self.reason = f'cannot {action} it: {error}'  # For skipped.csv, which has the path already.


@dataclasses.dataclass(eq=False)
class Ham10000Config(tfds.core.BuilderConfig):
  """Stores every image with its short side at most `short_side` pixels."""

  short_side: int = DEFAULT_SHORT_SIDE

  def __reduce__(self):
    # TFDS accepts a registered config only as the very object it registered, and pickles
    # the builder (inside the data source, for grain's worker processes) with its config:
    # unpickle to the canonical object, not to an equal copy that TFDS would reject.
    return config_for, (self.short_side,)


@functools.cache  # TFDS recognises its registered configs by identity, not by value.
def config_for(short_side: int = DEFAULT_SHORT_SIDE) -> Ham10000Config:
  if short_side < 1:
    raise ValueError(f'short_side must be a positive number of pixels, got {short_side}')
  return Ham10000Config(
      name=f'short{short_side}',
      short_side=short_side,
      description=f'Images resized so that their short side is {short_side} pixels (never upscaled).',
  )


class Ham10000(tfds.core.GeneratorBasedBuilder):
  """HAM10000: 10,015 dermoscopy images of pigmented skin lesions, 7 diagnoses."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: all images in one `train` split, with metadata.'}
  # Only the default here: any other short side works by passing `config=config_for(S)`.
  BUILDER_CONFIGS = [config_for(DEFAULT_SHORT_SIDE)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds this through `importlib_resources`, which it imports on every Python
    # but declares only for Python < 3.9 (tensorflow/datasets#11212): use the file directly.
    return epath.Path(__file__)

  def __init__(self, *, skip_bad_images: bool = False, **kwargs):
    # ArrayRecord gives random access for grain, and needs no TensorFlow to write or read.
    kwargs.setdefault('file_format', tfds.core.FileFormat.ARRAY_RECORD)
    super().__init__(**kwargs)
    # Only generation looks at it, so pickled copies (which TFDS rebuilds from the
    # constructor's TFDS arguments) may well lose it.
    self.skip_bad_images = skip_bad_images

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=CLASS_NAMES),
            'image_id': text(),
            'lesion_id': text(),
            'dx': text(),
            'dx_type': text(),
            'age': tfds.features.Scalar(dtype=np.float32, doc='Years; NaN when unknown.'),
            'sex': text(),
            'localization': text(),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),  # CONTENTS_KEYS, filled in by _generate_examples.
        homepage='https://doi.org/10.7910/DVN/DBW86T',
        citation="""\
@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common pigmented skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data}, volume={5}, pages={180161}, year={2018},
  doi={10.1038/sdata.2018.161}
}""",
    )

  def _split_generators(self, dl_manager):
    try:
      manual_dir = dl_manager.manual_dir
    except AssertionError as e:  # TFDS's way of saying the directory is missing or empty.
      raise Ham10000Error(str(e)) from None
    # Our own train/val/test splits are computed from the metadata (grouped by lesion),
    # so TFDS holds everything in one split.
    return {'train': self._generate_examples(os.fspath(manual_dir))}

  def _generate_examples(self, manual_dir: str):
    short_side = self.builder_config.short_side
    class_counts = collections.Counter()
    skipped: list[tuple[str, str, str]] = []  # (image_id, location, reason)
    with contextlib.ExitStack() as open_files:
      download = scan_manual_dir(manual_dir, open_files)
      records = read_metadata(download.metadata_text, download.metadata_location)
      check_images_match_metadata(records, download.images, manual_dir)
      for record, image in stored_images(records, download.images, short_side,
                                         self.skip_bad_images, skipped):
        class_counts[record['dx']] += 1
        yield record['image_id'], {**record, 'image': image, 'label': record['dx']}
    if not class_counts:
      raise Ham10000Error(f'None of the {len(records)} images in {manual_dir} could be read: the '
                          'download is damaged. Download it again.')
    # Still inside TFDS's incomplete dir: these become visible together with the data.
    self.info.metadata.update({
        'description': datasets.HAM10000.to_json(),
        'metadata_sha256': download.metadata_sha256,
        'class_counts': {name: class_counts[name] for name in CLASS_NAMES},
        'skipped_images': len(skipped),
    })
    write_skipped_file(self.data_dir, skipped)

  def _post_download_and_prepare_hook(self) -> None:
    write_metadata_file(self)


# ---------------------------------------------------------------------------------------
# Finding the files of a download.


@dataclasses.dataclass(frozen=True)
class ImageFile:
  location: str  # For messages: a path, or 'archive.zip:member'.
  read: Callable[[], bytes]


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
    raise Ham10000Error(
        f'The manual directory {manual_dir} does not exist.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
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
    raise Ham10000Error(f'Found {missing} in {manual_dir}. It contains: {found}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}')
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
    raise Ham10000Error(
        f'{location} is not a readable zip file ({e}). It is probably an incomplete download: '
        'download it again, or remove it from the manual directory.'
    ) from None


def read_image(image_file: ImageFile) -> bytes:
  try:
    return image_file.read()
  except (OSError, zipfile.BadZipFile, zlib.error) as e:  # Bad CRC, truncated member...
    raise BadImageError(image_file.location, 'read', e) from None


def _unreadable(location: str, error: Exception) -> Ham10000Error:
  return Ham10000Error(
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
    raise Ham10000Error(
        'Found several different metadata files: ' + ', '.join(contents) +
        '. Keep only the original HAM10000_metadata.csv in the manual directory.'
    )
  return next(iter(contents.items()))


def _decode_metadata(content: bytes, location: str) -> str:
  try:
    return content.decode('utf-8-sig')  # Tolerate the BOM that spreadsheet tools add.
  except UnicodeDecodeError as e:
    raise Ham10000Error(
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
    raise Ham10000Error(
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
    raise Ham10000Error(
        f'{location} has {len(problems)} malformed rows: ' + '; '.join(problems[:_EXAMPLES_IN_ERRORS]) +
        '. Use the original HAM10000_metadata.csv from the download.'
    )
  if not records:
    raise Ham10000Error(f'{location} has a header but no rows. Use the original HAM10000_metadata.csv.')

  rows_of_dx = _rows_by(records, row_numbers, 'dx')
  unknown = {dx: rows for dx, rows in rows_of_dx.items() if dx not in CLASS_NAMES}
  if unknown:
    raise Ham10000Error(
        f'{location} has unknown dx labels {dict((dx, len(rows)) for dx, rows in unknown.items())} '
        f'({_where(unknown)}); the HAM10000 labels are {list(CLASS_NAMES)}. Fix or remove those '
        'rows, or use the original metadata file.'
    )
  duplicates = {image_id: rows for image_id, rows in _rows_by(records, row_numbers, 'image_id').items()
                if len(rows) > 1}
  if duplicates:
    raise Ham10000Error(
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
    raise Ham10000Error(
        f'{len(missing)} images listed in the metadata are missing from {manual_dir}, e.g. '
        f'{missing[:_EXAMPLES_IN_ERRORS]}. The download is incomplete: download both image parts '
        f'again.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}'
    )
  unlisted = sorted(images.keys() - listed)
  if unlisted:
    # Harmless for training (they have no label), but worth knowing about.
    logging.warning('Ignoring %d images in %s that the metadata does not list, e.g. %s',
                    len(unlisted), manual_dir, unlisted[:_EXAMPLES_IN_ERRORS])


# ---------------------------------------------------------------------------------------
# Images.


def stored_images(records: Sequence[dict], images: dict[str, 'ImageFile'], short_side: int,
                  skip_bad_images: bool, skipped: list):
  """(record, JPEG bytes to store) for each record, its image read from `images` by image_id.

  An image that cannot be read or decoded fails the prepare, or with `skip_bad_images` is left
  out and added to `skipped` as (image_id, location, reason), for skipped.csv.
  """
  for record in records:
    image_file = images[record['image_id']]
    try:
      image = encode_for_storage(read_image(image_file), short_side, image_file.location)
    except BadImageError as e:
      if not skip_bad_images:
        raise
      logging.warning('Leaving out %s: %s', e.location, e.reason)
      skipped.append((record['image_id'], e.location, e.reason))
      continue
    yield record, image


def write_skipped_file(data_dir, skipped: Sequence[tuple[str, str, str]]) -> None:
  """skipped.csv beside the data, only when images were left out."""
  if skipped:
    write_csv_atomically(os.path.join(os.fspath(data_dir), SKIPPED_FILENAME),
                         ('image_id', 'path', 'reason'), skipped)


def encode_for_storage(data: bytes, short_side: int, location: str) -> bytes:
  """JPEG bytes whose short side is at most `short_side`.

  Images already that small are stored as the original bytes: upscaling adds no
  information and inflates storage, and the input pipeline resizes to the model's input
  size anyway. Re-encoding them would only add a second round of JPEG loss.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # Decode fully now, so that a truncated file fails here and not mid-training.
      if min(image.size) <= short_side and image.format == 'JPEG' and image.mode == 'RGB':
        return data
      image = image.convert('RGB')
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(location, 'decode', e) from None
  width, height = image.size
  if min(width, height) > short_side:
    scale = short_side / min(width, height)
    size = (max(short_side, round(width * scale)), max(short_side, round(height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=JPEG_QUALITY)
  return out.getvalue()


# ---------------------------------------------------------------------------------------
# Metadata of the prepared dataset, in source order.


def metadata_from_source(source, keys: Sequence[str] = ('image_id', 'lesion_id', 'dx')
                         ) -> dict[str, np.ndarray]:
  """Reads `keys` and the label of every record (images stay encoded)."""
  columns = collections.defaultdict(list)
  for i in range(len(source)):
    example = source[i]
    for key in keys:
      columns[key].append(_as_str(example[key]))
    columns['label'].append(int(example['label']))
  return _as_arrays(columns)


def write_metadata_file(builder: tfds.core.DatasetBuilder,
                        keys: Sequence[str] = ('image_id', 'lesion_id', 'dx')) -> None:
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  metadata = metadata_from_source(source, keys)
  path = os.path.join(os.fspath(builder.data_dir), METADATA_FILENAME)
  write_csv_atomically(path, list(metadata), zip(*metadata.values()))


def write_csv_atomically(path: str, header: Sequence[str], rows) -> None:
  """Readers see the old file or the whole new one, never a half-written one."""
  temporary = path + '.incomplete'
  with open(temporary, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
    f.flush()
    os.fsync(f.fileno())  # A crash right after the rename must not leave an empty file.
  os.replace(temporary, path)


def read_metadata_file(path: str) -> dict[str, np.ndarray]:
  columns = collections.defaultdict(list)
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      for key, value in row.items():
        columns[key].append(int(value) if key == 'label' else value)
  return _as_arrays(columns)


def _as_arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
  return {key: np.asarray(values, dtype=np.int64 if key == 'label' else str)
          for key, values in columns.items()}


def _as_str(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)

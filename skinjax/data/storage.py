"""How a prepared dataset sits on disk, and the file work that preparing any format shares.

A prepared dataset is a version directory, data_dir/<name>/short{S}/<VERSION>/, holding the TFDS
ArrayRecord files and DatasetInfo, metadata.csv (image_id, group, dx, label in source order, so
that splitting never reads the images) and, when images were left out, skipped.csv. It is built
in a staging directory inside data_dir and renamed into place only when complete, so that an
interrupted or failed prepare leaves nothing that reading accepts, and a failed rebuild leaves the
previous dataset as it was.

No TensorFlow Datasets import here: training on the synthetic source never loads TFDS.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import glob
import io
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
from PIL import Image

from skinjax.data import augment

DEFAULT_SHORT_SIDE = 256
VERSION = '1.0.0'
JPEG_QUALITY = 95
METADATA_FILENAME = 'metadata.csv'
METADATA_KEYS = ('image_id', 'group', 'dx')  # then label
SKIPPED_FILENAME = 'skipped.csv'  # image_id, path, reason
# Staging directories of prepares in progress, directly inside data_dir (the same file system as
# the target, so that the final rename is atomic). One left behind was interrupted. Earlier code
# staged HAM10000 under the second prefix.
STAGING_PREFIX = '.dataset-incomplete-'
EARLIER_STAGING_PREFIXES = ('.ham10000-incomplete-',)


class DatasetError(ValueError):
  """The download cannot be prepared as asked; the message names the file and the fix."""


class BadImageError(DatasetError):
  """One image cannot be read or decoded: fatal, unless the prepare skips bad images."""

  def __init__(self, location: str, action: str, error: Exception):
    super().__init__(
        f'Cannot {action} the image {location}: {error}. The file is corrupt or truncated: '
        'download it again (or the image part that holds it), or prepare with --skip_bad_images '
        'to leave such images out (they are then listed in skipped.csv).')
    self.location = location
    self.reason = f'cannot {action} it: {error}'  # for skipped.csv, which has the path already


# ---------------------------------------------------------------------------------------
# Where things are.


def version_dir(data_dir, name: str, short_side: int) -> str:
  return os.path.join(os.path.expanduser(os.fspath(data_dir)), name, f'short{short_side}', VERSION)


def is_prepared(data_dir, name: str, short_side: int) -> bool:
  # TFDS writes dataset_info.json last, and `move_into_place` makes it visible only together
  # with everything else.
  return os.path.isfile(os.path.join(version_dir(data_dir, name, short_side), 'dataset_info.json'))


def prepared_datasets(data_dir) -> dict[str, list[int]]:
  """{name: short sides} of the datasets prepared in data_dir."""
  data_dir = os.path.expanduser(os.fspath(data_dir))
  found = collections.defaultdict(set)
  for path in glob.glob(os.path.join(glob.escape(data_dir), '*', 'short*', '*', 'dataset_info.json')):
    name, config = os.path.relpath(path, data_dir).split(os.sep)[:2]
    if config[len('short'):].isdigit():
      found[name].add(int(config[len('short'):]))
  return {name: sorted(sides) for name, sides in sorted(found.items())}


# ---------------------------------------------------------------------------------------
# Images.


@dataclasses.dataclass(frozen=True)
class ImageFile:
  location: str  # for messages: a path, or 'archive.zip:member'
  read: Callable[[], bytes]


def stored_images(records: Sequence[dict], images: dict[str, ImageFile], short_side: int,
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


def read_image(image_file: ImageFile) -> bytes:
  try:
    return image_file.read()
  except (OSError, zipfile.BadZipFile, zlib.error) as e:  # bad CRC, truncated zip member...
    raise BadImageError(image_file.location, 'read', e) from None


def encode_for_storage(data: bytes, short_side: int, location: str) -> bytes:
  """JPEG bytes whose short side is at most `short_side`.

  Images already that small are stored as the original bytes: upscaling adds no information
  and inflates storage, and the input pipeline resizes to the model's input size anyway.
  Re-encoding them would only add a second round of JPEG loss.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # decode fully now, so that a truncated file fails here and not mid-training
      if min(image.size) <= short_side and image.format == 'JPEG' and image.mode == 'RGB':
        return data
      image = image.convert('RGB')
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImageError(location, 'decode', e) from None
  image = augment.shrink_to_short_side(image, short_side, Image.Resampling.LANCZOS)
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=JPEG_QUALITY)
  return out.getvalue()


# ---------------------------------------------------------------------------------------
# The CSV files beside the data.


def write_skipped_file(directory, skipped: Sequence[tuple[str, str, str]]) -> None:
  """skipped.csv beside the data, only when images were left out."""
  if skipped:
    write_csv_atomically(os.path.join(os.fspath(directory), SKIPPED_FILENAME),
                         ('image_id', 'path', 'reason'), skipped)


def metadata_from_source(source, keys: Sequence[str] = METADATA_KEYS) -> dict[str, np.ndarray]:
  """Reads `keys` and the label of every record (images stay encoded)."""
  columns = collections.defaultdict(list)
  for i in range(len(source)):
    example = source[i]
    for key in keys:
      value = example[key]
      columns[key].append(value.decode('utf-8') if isinstance(value, bytes) else str(value))
    columns['label'].append(int(example['label']))
  return _as_arrays(columns)


def write_metadata_file(directory, metadata: dict[str, np.ndarray]) -> None:
  write_csv_atomically(os.path.join(os.fspath(directory), METADATA_FILENAME), list(metadata),
                       zip(*metadata.values()))


def read_metadata_file(path) -> dict[str, np.ndarray]:
  columns = collections.defaultdict(list)
  with open(path, newline='') as f:
    for row in csv.DictReader(f):
      for key, value in row.items():
        columns[key].append(int(value) if key == 'label' else value)
  return _as_arrays(columns)


def write_csv_atomically(path: str, header: Sequence[str], rows) -> None:
  """Readers see the old file or the whole new one, never a half-written one."""
  temporary = path + '.incomplete'
  with open(temporary, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
    f.flush()
    os.fsync(f.fileno())  # a crash right after the rename must not leave an empty file
  os.replace(temporary, path)


def _as_arrays(columns: dict[str, list]) -> dict[str, np.ndarray]:
  return {key: np.asarray(values, dtype=np.int64 if key == 'label' else str)
          for key, values in columns.items()}


# ---------------------------------------------------------------------------------------
# Staging.


def warn_about_interrupted_prepares(data_dir: str) -> None:
  leftovers = sorted(path for prefix in (STAGING_PREFIX, *EARLIER_STAGING_PREFIXES)
                     for path in glob.glob(os.path.join(glob.escape(data_dir), prefix + '*')))
  if leftovers:
    logging.warning('Found %d directories left by interrupted prepares, which nothing reads: %s. '
                    'Delete them to free the space (unless a prepare is running now).',
                    len(leftovers), ', '.join(leftovers))


def move_into_place(staged: str, target: str, staging_dir: str) -> None:
  """Renames the staged version dir to `target`; what was there goes into the staging dir, to be deleted."""
  os.makedirs(os.path.dirname(target), exist_ok=True)
  # TFDS notes the default config next to the config directories; keep the layout it would write.
  config_note = os.path.join(os.path.dirname(os.path.dirname(staged)), '.config')
  target_note = os.path.join(os.path.dirname(os.path.dirname(target)), '.config')
  if os.path.isdir(config_note) and not os.path.exists(target_note):
    shutil.copytree(config_note, target_note)
  if not os.path.lexists(target):
    os.rename(staged, target)
    return
  replaced = os.path.join(staging_dir, 'replaced')
  os.rename(target, replaced)  # from here until the next rename, nothing is prepared: never something broken
  try:
    os.rename(staged, target)
  except OSError:
    os.rename(replaced, target)
    raise
  logging.info('Replaced the dataset previously prepared in %s.', target)

"""Prepare HAM10000 once with TFDS, then load it as a random-access source plus its metadata.

A prepared dataset is a version directory, data_dir/ham10000/short{S}/{VERSION}/, holding the
TFDS files, metadata.csv and (when images were left out) skipped.csv. `prepare` builds it in a
staging directory inside data_dir and renames it into place only when it is complete, so that
an interrupted or failed prepare never leaves something that `load` accepts, and a failed
rebuild leaves the previous dataset as it was.
"""

from __future__ import annotations

import glob
import os
import pathlib
import re
import shlex
import shutil
import tempfile
from collections.abc import Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from skinjax.data.constants import CLASS_NAMES, DOWNLOAD_HELP
from skinjax.data.ham10000_builder import (
    CONTENTS_KEYS,
    DEFAULT_SHORT_SIDE,
    METADATA_FILENAME,
    SKIPPED_FILENAME,
    Ham10000,
    Ham10000Error,
    config_for,
    metadata_from_source,
    read_metadata_file,
    write_metadata_file,
)

__all__ = ['DatasetNotPreparedError', 'Ham10000Error', 'fingerprint', 'is_prepared', 'load', 'prepare']

# Staging directories of prepares in progress, directly inside data_dir (the same file system
# as the target, so that the final rename is atomic). One left behind was interrupted.
STAGING_PREFIX = '.ham10000-incomplete-'


class DatasetNotPreparedError(FileNotFoundError):
  """The prepared dataset is not in data_dir; the message gives the command that prepares it."""


def prepare(manual_dir, data_dir, short_side: int = DEFAULT_SHORT_SIDE, *, overwrite: bool = False,
            skip_bad_images: bool = False) -> Ham10000:
  """Builds the dataset from the user's download; a no-op when it is prepared, unless `overwrite`.

  `skip_bad_images` leaves out images that cannot be read or decoded (listed in skipped.csv
  next to the data) instead of failing.
  """
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise Ham10000Error(
        f'The manual directory {manual_dir} does not exist.\n' + Ham10000.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
  data_dir = os.path.expanduser(os.fspath(data_dir))
  builder = _builder(data_dir, short_side)
  if builder.is_prepared() and not overwrite:
    logging.info('Reusing HAM10000 prepared in %s (overwrite=True rebuilds it).', builder.data_dir)
    # A dataset prepared by older code may lack it (it used to be written after the rename).
    if not os.path.exists(_metadata_path(builder)):
      write_metadata_file(builder)
    return builder

  if not os.listdir(manual_dir):  # before a staging folder is made in data_dir
    raise Ham10000Error(
        f'The manual directory {manual_dir} is empty.\n' + Ham10000.MANUAL_DOWNLOAD_INSTRUCTIONS)
  os.makedirs(data_dir, exist_ok=True)
  _warn_about_interrupted_prepares(data_dir)
  staging_dir = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir)
  try:
    staged = Ham10000(config=config_for(short_side), data_dir=staging_dir, skip_bad_images=skip_bad_images)
    # TFDS would itself delete an existing dataset before building its replacement (overwrite),
    # and reuse a directory that merely exists: build apart, then swap.
    staged.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    _move_into_place(os.fspath(staged.data_path), os.fspath(builder.data_path), staging_dir)
  finally:
    shutil.rmtree(staging_dir, ignore_errors=True)
  return _builder(data_dir, short_side)


def _move_into_place(staged: str, target: str, staging_dir: str) -> None:
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
  os.rename(target, replaced)  # From here until the next rename, nothing is prepared: never something broken.
  try:
    os.rename(staged, target)
  except OSError:
    os.rename(replaced, target)
    raise
  logging.info('Replaced the HAM10000 previously prepared in %s.', target)


def _warn_about_interrupted_prepares(data_dir: str) -> None:
  leftovers = sorted(glob.glob(os.path.join(glob.escape(data_dir), STAGING_PREFIX + '*')))
  if leftovers:
    logging.warning('Found %d directories left by interrupted prepares, which nothing reads: %s. '
                    'Delete them to free the space (unless a prepare is running now).',
                    len(leftovers), ', '.join(leftovers))


def is_prepared(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> bool:
  return _builder(data_dir, short_side).is_prepared()


def fingerprint(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> dict:
  """What identifies the prepared dataset, from its DatasetInfo alone (no image is read).

  Returns {'name', 'version', 'config', 'metadata_sha256' (of the metadata CSV as
  downloaded), 'num_examples', 'class_counts' ({class name: examples}), 'skipped_images'}:
  plain JSON values, equal for two datasets prepared from the same download with the same
  short side and code version. data_dir is left out: moving a dataset does not change it.
  """
  builder = _prepared_builder(data_dir, short_side)
  contents = dict(builder.info.metadata.items()) if builder.info.metadata is not None else {}
  missing = [key for key in CONTENTS_KEYS if key not in contents]
  if missing:
    raise DatasetNotPreparedError(
        f'The HAM10000 in {builder.data_dir} was prepared by an older skinjax, which did not record '
        f'{missing}. Prepare it again from your download, replacing it:\n  ' +
        _prepare_command(os.path.expanduser(os.fspath(data_dir)), short_side, overwrite=True))
  return {
      'name': builder.name,
      'version': str(builder.version),
      'config': builder.builder_config.name,
      'metadata_sha256': str(contents['metadata_sha256']),
      'num_examples': int(builder.info.splits['train'].num_examples),
      'class_counts': {name: int(contents['class_counts'].get(name, 0)) for name in CLASS_NAMES},
      'skipped_images': int(contents['skipped_images']),
  }


def contents(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> dict:
  """What the prepared dataset's DatasetInfo metadata records (CONTENTS_KEYS and its description)."""
  builder = _prepared_builder(data_dir, short_side)
  return dict(builder.info.metadata.items()) if builder.info.metadata is not None else {}


def skipped_images_path(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> str:
  """Where the images left out by skip_bad_images are listed (the file exists only if some were)."""
  return os.path.join(os.fspath(_builder(data_dir, short_side).data_dir), SKIPPED_FILENAME)


def load(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> tuple[Sequence[dict], dict[str, np.ndarray]]:
  """Returns (source, metadata) of the prepared dataset.

  `source[i]` is a dict whose `image` holds the encoded JPEG bytes: the input pipeline
  decodes them itself, which is faster and lets it resize while decoding. `metadata` holds
  numpy arrays in source order: image_id, lesion_id, dx (str) and label (int64).
  """
  builder = _prepared_builder(data_dir, short_side)
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  metadata = _read_cached_metadata(builder, len(source))
  if metadata is None:
    metadata = metadata_from_source(source)
  return source, metadata


def _builder(data_dir, short_side: int) -> Ham10000:
  return Ham10000(config=config_for(short_side), data_dir=os.path.expanduser(os.fspath(data_dir)))


def _prepared_builder(data_dir, short_side: int) -> Ham10000:
  # TFDS counts a version dir as prepared once it holds dataset_info.json, which it writes last
  # and which `prepare` renames into place only together with everything else.
  builder = _builder(data_dir, short_side)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(_not_prepared_message(os.path.expanduser(os.fspath(data_dir)), short_side))
  return builder


def _metadata_path(builder) -> str:
  return os.path.join(os.fspath(builder.data_dir), METADATA_FILENAME)


def _read_cached_metadata(builder, num_records: int) -> dict[str, np.ndarray] | None:
  path = _metadata_path(builder)
  if not os.path.exists(path):
    return None
  metadata = read_metadata_file(path)
  # A stale or foreign file must not silently mislabel examples: fall back to the records.
  return metadata if len(metadata.get('image_id', ())) == num_records else None


def prepared_short_sides(data_dir: str) -> list[int]:
  """Short sides of the HAM10000 configs prepared in data_dir (data_dir/ham10000/shortS/VERSION)."""
  sides = set()
  for info in glob.glob(os.path.join(data_dir, Ham10000.name, 'short*', '*', 'dataset_info.json')):
    config_name = pathlib.Path(info).parents[1].name
    if match := re.fullmatch(r'short(\d+)', config_name):
      sides.add(int(match.group(1)))
  return sorted(sides)


def _not_prepared_message(data_dir: str, short_side: int) -> str:
  message = f'HAM10000 with short side {short_side} is not prepared in {data_dir}.'
  others = prepared_short_sides(data_dir)
  if others:
    message += (f' That directory holds it with short side {", ".join(map(str, others))}'
                f' (pass that size, or prepare this one).')
  return message + '\n' + DOWNLOAD_HELP.format(data_dir=_data_dir_flags(data_dir, short_side))


def _prepare_command(data_dir: str, short_side: int, overwrite: bool = False) -> str:
  return ('python scripts/prepare_ham10000.py --manual_dir=DOWNLOAD_DIR --data_dir='
          + _data_dir_flags(data_dir, short_side) + (' --overwrite' if overwrite else ''))


def _data_dir_flags(data_dir: str, short_side: int) -> str:
  """The value of --data_dir, followed by --image_size when it is not the default."""
  size_flag = '' if short_side == DEFAULT_SHORT_SIDE else f' --image_size={short_side}'
  return shlex.quote(data_dir) + size_flag

"""Prepare HAM10000 once with TFDS, then load it as a random-access source plus its metadata."""

from __future__ import annotations

import glob
import os
import pathlib
import re
import shlex
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from skinjax.data.constants import DOWNLOAD_HELP
from skinjax.data.ham10000_builder import (
    DEFAULT_SHORT_SIDE,
    METADATA_FILENAME,
    Ham10000,
    Ham10000Error,
    config_for,
    metadata_from_source,
    read_metadata_file,
    write_metadata_file,
)

__all__ = ['DatasetNotPreparedError', 'Ham10000Error', 'load', 'prepare']


class DatasetNotPreparedError(FileNotFoundError):
  """The prepared dataset is not in data_dir; the message gives the command that prepares it."""


def prepare(manual_dir, data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> Ham10000:
  """Builds the dataset from the user's download (reuses it when already prepared)."""
  manual_dir = os.path.expanduser(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise Ham10000Error(
        f'The manual directory {manual_dir} does not exist.\n' + Ham10000.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
  builder = _builder(data_dir, short_side)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  # The builder writes it right after generating; a dataset prepared by older code lacks it.
  if not os.path.exists(_metadata_path(builder)):
    write_metadata_file(builder)
  return builder


def load(data_dir, short_side: int = DEFAULT_SHORT_SIDE) -> tuple[Sequence[dict], dict[str, np.ndarray]]:
  """Returns (source, metadata) of the prepared dataset.

  `source[i]` is a dict whose `image` holds the encoded JPEG bytes: the input pipeline
  decodes them itself, which is faster and lets it resize while decoding. `metadata` holds
  numpy arrays in source order: image_id, lesion_id, dx (str) and label (int64).
  """
  builder = _builder(data_dir, short_side)
  if not builder.is_prepared():
    raise DatasetNotPreparedError(_not_prepared_message(os.path.expanduser(os.fspath(data_dir)), short_side))
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  metadata = _read_cached_metadata(builder, len(source))
  if metadata is None:
    metadata = metadata_from_source(source)
  return source, metadata


def _builder(data_dir, short_side: int) -> Ham10000:
  return Ham10000(config=config_for(short_side), data_dir=os.path.expanduser(os.fspath(data_dir)))


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
  size_flag = '' if short_side == DEFAULT_SHORT_SIDE else f' --image_size={short_side}'
  return message + '\n' + DOWNLOAD_HELP.format(data_dir=shlex.quote(data_dir) + size_flag)

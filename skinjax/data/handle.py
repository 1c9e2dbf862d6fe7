"""The training data a config names, opened once and passed down: `PreparedDataset.open(config)`.

    dataset = PreparedDataset.open(config)  # checks config.data; reads nothing yet
    dataset.fingerprint   # dict identifying the data, for W/config.json's resume guard
    dataset.description   # datasets.DatasetDescription: classes, melanoma class, grouping
    dataset.source        # random access: source[i] is a dict with 'image' and 'label'
    dataset.metadata      # {'image_id', 'group', 'dx', 'label'}: numpy arrays in source order
    dataset.splits        # {'train', 'val', 'test'}: index arrays into source, by config.data.split

Each attribute is computed on first use and kept. For a prepared dataset the TFDS builder is made
once, when first needed; fingerprint and description read its DatasetInfo only, metadata reads
metadata.csv, and no attribute but `source` opens the ArrayRecord files. The synthetic source
(config.data.source='synthetic') answers the same attributes, so callers need no branches.

config.data.source is 'prepared' (the dataset named config.data.dataset in config.data.data_dir,
prepared with short side config.data.prepared_size; 'ham10000' is its older name) or 'synthetic'.
With config.data.extra_train, `open` gives a `combined.CombinedDataset`: the same attributes over
the main dataset and its extras.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Sequence

import ml_collections
import numpy as np

from skinjax.data import augment
from skinjax.data import combined
from skinjax.data import datasets
from skinjax.data import formats
from skinjax.data import splits as splits_lib
from skinjax.data import storage
from skinjax.data import synthetic

SOURCES = ('prepared', 'ham10000', 'synthetic')
# The name HAM10000 prepared from its own download has (prepared.check_name keeps it for that).
HAM10000_NAME = datasets.HAM10000.name
# What a prepared dataset records in its DatasetInfo metadata besides its description.
CONTENTS_KEYS = ('metadata_sha256', 'class_counts', 'skipped_images')


class DatasetNotPreparedError(FileNotFoundError):
  """The prepared dataset is not in data_dir; the message gives the command that prepares it."""


class PreparedDataset:
  """A dataset prepared on disk with TFDS (scripts/prepare_dataset.py); see the module docstring.

  `PreparedDataset.open(config)` is the constructor to use; `PreparedDataset(data_dir, name,
  short_side)` opens a folder directly, with the default split settings unless given. Besides the
  attributes above, a folder has `path` (its version directory), `builder` (TFDS's reader) and
  `num_examples`; the synthetic dataset has `num_examples` only.
  """

  def __init__(self, data_dir, name: str = HAM10000_NAME,
               short_side: int = storage.DEFAULT_SHORT_SIDE, *, split: str = 'lesion_grouped',
               split_fractions: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 0,
               folds: int = 0, fold: int = 0):
    self.data_dir = os.path.expanduser(os.fspath(data_dir))
    self.name = name
    self.short_side = short_side
    self.split, self.split_fractions, self.split_seed = split, tuple(split_fractions), split_seed
    self.folds, self.fold = folds, fold

  @classmethod
  def open(cls, config: ml_collections.ConfigDict) -> PreparedDataset:
    data = config.data
    if data.source not in SOURCES:
      raise ValueError(f"config.data.source={data.source!r}: use 'prepared' or 'synthetic'.")
    split = dict(split=data.split, split_fractions=data.split_fractions, split_seed=data.split_seed,
                 folds=data.get('folds', 0), fold=data.get('fold', 0))
    extra_train = tuple(data.get('extra_train', ()))
    if data.source == 'synthetic':
      if extra_train:
        raise combined.SourcesError("config.data.extra_train joins prepared datasets to a prepared "
                                    "one: set config.data.source='prepared', or extra_train=().")
      return SyntheticDataset(data.synthetic_examples, config.seed, **split)
    main = cls(data.data_dir, data.dataset, data.prepared_size, **split)
    if not extra_train:
      return main
    return combined.CombinedDataset(
        main, [cls(data.data_dir, name, data.prepared_size) for name in extra_train],
        label_map=dict(data.label_map), extra_val_fraction=data.extra_val_fraction,
        source_weights=tuple(data.source_weights))

  @property
  def path(self) -> str:
    """The version directory: data_dir/<name>/short<S>/<version>."""
    return storage.version_dir(self.data_dir, self.name, self.short_side)

  @functools.cached_property
  def builder(self):
    """TFDS's reader of the folder; no builder class is needed, nor made again."""
    if not storage.is_prepared(self.data_dir, self.name, self.short_side):
      raise DatasetNotPreparedError(not_prepared_message(self.data_dir, self.name, self.short_side))
    import tensorflow_datasets as tfds  # only real data loads TFDS
    return tfds.builder_from_directory(self.path)

  @functools.cached_property
  def _contents(self) -> dict:
    """What the DatasetInfo metadata records: the description and CONTENTS_KEYS."""
    metadata = self.builder.info.metadata
    return dict(metadata.items()) if metadata is not None else {}

  @functools.cached_property
  def description(self) -> datasets.DatasetDescription:
    recorded = self._contents.get('description')
    if recorded:
      return datasets.DatasetDescription.from_json(recorded)
    # HAM10000 prepared before descriptions were recorded; only its own builder wrote such folders.
    if self.builder.name == HAM10000_NAME:
      return datasets.HAM10000
    raise DatasetNotPreparedError(f'{self.path} records no dataset description: skinjax did not '
                                  'prepare it. Prepare it with:\n  ' + self._prepare_again())

  @functools.cached_property
  def fingerprint(self) -> dict:
    """What identifies the prepared data, from its DatasetInfo alone (no image is read).

    Plain JSON values, equal for two datasets prepared from the same download with the same short
    side and code version; data_dir is left out, so moving a dataset does not change it.
    """
    contents = self._contents
    missing = [key for key in CONTENTS_KEYS if key not in contents]
    if missing:
      raise DatasetNotPreparedError(
          f'The {self.name} in {self.path} was prepared by an older skinjax, which did not record '
          f'{missing}. Prepare it again from your download, replacing it:\n  '
          + self._prepare_again())
    description = self.description
    fingerprint = {
        'source': 'prepared',
        'name': self.builder.name,
        'format': description.format,
        'version': str(self.builder.version),
        'config': f'short{self.short_side}',
        'metadata_sha256': str(contents['metadata_sha256']),
        'num_examples': self.num_examples,
        'class_counts': {c: int(contents['class_counts'].get(c, 0)) for c in description.class_names},
        'skipped_images': int(contents['skipped_images']),
    }
    if (fingerprint['name'], fingerprint['format']) == (HAM10000_NAME, 'ham10000'):
      # Runs on HAM10000 recorded this shape before other formats existed: keep it, so that they
      # resume, on folders prepared then and on the same download prepared again now.
      del fingerprint['format']
      fingerprint['source'] = 'ham10000'
    return fingerprint

  def _prepare_again(self) -> str:
    format_name = self.description.format if 'description' in self._contents else None
    return prepare_command(self.data_dir, self.name, self.short_side, format_name, '--overwrite')

  @property
  def num_examples(self) -> int:
    return int(self.builder.info.splits['train'].num_examples)

  @functools.cached_property
  def source(self):
    """source[i]['image'] holds the encoded JPEG bytes: the input pipeline decodes them itself,
    which is faster and lets it resize while decoding."""
    import tensorflow_datasets as tfds
    return self.builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})

  @functools.cached_property
  def metadata(self) -> dict[str, np.ndarray]:
    path = os.path.join(self.path, storage.METADATA_FILENAME)
    metadata = storage.read_metadata_file(path) if os.path.exists(path) else {}
    # HAM10000 folders prepared by earlier code name the group by what it is.
    if 'lesion_id' in metadata and 'group' not in metadata:
      metadata['group'] = metadata.pop('lesion_id')
    # A stale or foreign file must not silently mislabel examples: fall back to the records.
    if len(metadata.get('image_id', ())) != self.num_examples or 'group' not in metadata:
      group_key = 'group' if 'group' in self.builder.info.features else 'lesion_id'
      metadata = storage.metadata_from_source(self.source, ('image_id', group_key, 'dx'))
      metadata['group'] = metadata.pop(group_key)
    return metadata

  @functools.cached_property
  def splits(self) -> dict[str, np.ndarray]:
    """Grouped (or, for the study's method, per-image) splits; every class must be in each.
    With folds, fold `fold` of train + val (splits.fold_splits)."""
    return split_indices(self.metadata, self.description, method=self.split,
                         fractions=self.split_fractions, seed=self.split_seed, folds=self.folds,
                         fold=self.fold)

  @property
  def descriptions(self) -> list[datasets.DatasetDescription]:
    """Each source's description: this dataset's alone (combined.CombinedDataset has several)."""
    return [self.description]

  def source_weights_of(self, indices: np.ndarray) -> None:
    """One source: its images weigh alike (config.data.source_weights weighs extra datasets)."""
    return None

  def sources_summary(self) -> list[str]:
    """What extra datasets add (combined.CombinedDataset); one source adds nothing."""
    return []


class SyntheticDataset(PreparedDataset):
  """The HAM10000-shaped synthetic source, built in memory: nothing to prepare or read."""

  def __init__(self, num_examples: int, seed: int = 0, *, split: str = 'lesion_grouped',
               split_fractions: Sequence[float] = (0.6, 0.2, 0.2), split_seed: int = 0,
               folds: int = 0, fold: int = 0):
    self.num_synthetic, self.seed = num_examples, seed
    self.split, self.split_fractions, self.split_seed = split, tuple(split_fractions), split_seed
    self.folds, self.fold = folds, fold

  description = datasets.SYNTHETIC

  @property
  def num_examples(self) -> int:
    return self.num_synthetic

  @functools.cached_property
  def fingerprint(self) -> dict:
    return {'source': 'synthetic', 'num_examples': self.num_synthetic, 'seed': self.seed}

  @functools.cached_property
  def source(self) -> synthetic.SyntheticSource:
    return synthetic.SyntheticSource(self.num_synthetic, seed=self.seed)

  @functools.cached_property
  def metadata(self) -> dict[str, np.ndarray]:
    return {**self.source.metadata, 'group': self.source.metadata['lesion_id']}


def spread_sample(indices: np.ndarray, count: int = 256) -> np.ndarray:
  """At most `count` of `indices`, evenly spread over them: what the start of a run inspects."""
  return indices[::max(1, len(indices) // count)][:count]


def median_training_short_side(dataset) -> int:
  """The median shorter side, in pixels, of the main dataset's training images (a spread sample
  of them; image headers only). With extras, the main dataset's: it defines the task and holds
  the validation and test images."""
  main = getattr(dataset, 'main', dataset)
  return round(float(np.median([min(augment.image_size(main.source[int(i)]['image']))
                                for i in spread_sample(main.splits['train'])])))


def split_indices(metadata: dict, description: datasets.DatasetDescription, *, method: str,
                  fractions: Sequence[float], seed: int, folds: int = 0,
                  fold: int = 0) -> dict[str, np.ndarray]:
  splits = splits_lib.make_splits(metadata['label'], metadata['group'], fractions=tuple(fractions),
                                  seed=seed, method=method)
  if folds:
    splits = splits_lib.fold_splits(splits, metadata['label'], metadata['group'], folds, fold,
                                    seed, description.class_names)
  splits_lib.check_every_class_present(splits, metadata['label'], description.num_classes,
                                       description.class_names)
  return splits


def not_prepared_message(data_dir, name: str, short_side: int) -> str:
  data_dir = os.path.expanduser(os.fspath(data_dir))
  message = f'No dataset named {name!r} with short side {short_side} is prepared in {data_dir}.'
  prepared = storage.prepared_datasets(data_dir)
  if prepared.get(name):
    sizes = ', '.join(map(str, prepared[name]))
    message += (f' It holds {name} with short side {sizes} (set config.data.prepared_size to '
                'it, or prepare this size).')
  elif prepared:
    message += f' It holds {", ".join(prepared)} (set config.data.dataset to one of them).'
  instructions = formats.DOWNLOAD_INSTRUCTIONS.get(name)
  if instructions:
    message += '\n' + instructions.rstrip()
  return message + '\nPrepare it with:\n  ' + prepare_command(data_dir, name, short_side)


def prepare_command(data_dir, name: str, short_side: int, format_name: str | None = None,
                    *extra_flags: str) -> str:
  """The command line that prepares this dataset (from a placeholder download)."""
  # By default a dataset is named after its format; a name tells no more than that.
  format_name = format_name or (name if name in formats.FORMATS else 'FORMAT')
  flags = [f'--format={format_name}', *([f'--name={name}'] if name != format_name else []),
           '--manual_dir=DOWNLOAD_DIR', f'--data_dir={shlex.quote(os.fspath(data_dir))}',
           *([f'--image_size={short_side}'] if short_side != storage.DEFAULT_SHORT_SIDE else []),
           *extra_flags]
  if format_name == name == HAM10000_NAME:
    return 'python scripts/prepare_ham10000.py ' + ' '.join(flags[1:])  # its documented alias
  return 'python scripts/prepare_dataset.py ' + ' '.join(flags)

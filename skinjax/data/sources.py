"""Where training examples come from: a prepared dataset or the synthetic source, and their splits.

`config.data.source` is 'prepared' (the dataset named `config.data.dataset` in
`config.data.data_dir`; 'ham10000', its older name, means the same) or 'synthetic'.
"""

import ml_collections
import numpy as np

from skinjax.data import datasets
from skinjax.data import splits as splits_lib
from skinjax.data import synthetic

PREPARED_SOURCES = ('prepared', 'ham10000')


def _check_source(config: ml_collections.ConfigDict) -> None:
  if config.data.source not in ('synthetic', *PREPARED_SOURCES):
    raise ValueError(f"config.data.source={config.data.source!r}: use 'prepared' or 'synthetic'.")


def open_source(config: ml_collections.ConfigDict):
  """(random-access source, metadata, description) for the config's data.

  metadata holds arrays in source order: image_id, group (what the splits keep together), dx
  (the class name) and label.
  """
  _check_source(config)
  if config.data.source == 'synthetic':
    source = synthetic.SyntheticSource(config.data.synthetic_examples, seed=config.seed)
    return source, {**source.metadata, 'group': source.metadata['lesion_id']}, datasets.SYNTHETIC
  from skinjax.data import prepared  # imports TFDS only when real data is used
  return prepared.load(config.data.data_dir, config.data.dataset, config.data.prepared_size)


def describe(config: ml_collections.ConfigDict) -> datasets.DatasetDescription:
  """The description of the config's data, without reading its examples."""
  _check_source(config)
  if config.data.source == 'synthetic':
    return datasets.SYNTHETIC
  from skinjax.data import prepared
  return prepared.describe(config.data.data_dir, config.data.dataset, config.data.prepared_size)


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What identifies the training data, cheaply; W/config.json records it to guard resumes."""
  _check_source(config)
  if config.data.source == 'synthetic':
    return {'source': 'synthetic', 'num_examples': config.data.synthetic_examples,
            'seed': config.seed}
  from skinjax.data import prepared
  return prepared.fingerprint(config.data.data_dir, config.data.dataset, config.data.prepared_size)


def split_indices(config: ml_collections.ConfigDict, metadata: dict,
                  description: datasets.DatasetDescription) -> dict[str, np.ndarray]:
  splits = splits_lib.make_splits(metadata['label'], metadata['group'],
                                  fractions=tuple(config.data.split_fractions),
                                  seed=config.data.split_seed, method=config.data.split)
  splits_lib.check_every_class_present(splits, metadata['label'], description.num_classes,
                                       description.class_names)
  return splits


def class_weights(train_labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray:
  """Per-class loss weights, scaled so that the average weight over training examples is 1."""
  counts = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
  if mode == 'none':
    return np.ones(num_classes, np.float32)
  if mode == 'inverse_freq':
    raw = 1.0 / np.maximum(counts, 1)
  elif mode == 'sqrt_inverse_freq':
    raw = 1.0 / np.sqrt(np.maximum(counts, 1))
  else:
    raise ValueError(f"config.train.class_weighting={mode!r}: use 'none', 'inverse_freq' or "
                     "'sqrt_inverse_freq'.")
  return (raw * counts.sum() / (raw * counts).sum()).astype(np.float32)

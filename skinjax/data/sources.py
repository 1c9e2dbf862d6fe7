"""Where training examples come from: prepared HAM10000 or the synthetic source, and their splits."""

import ml_collections
import numpy as np

from skinjax.data import splits as splits_lib
from skinjax.data import synthetic
from skinjax.data.constants import CLASS_NAMES, NUM_CLASSES


def open_source(config: ml_collections.ConfigDict):
  """(random-access source, metadata dict of arrays in source order) for `config.data.source`."""
  if config.data.source == 'synthetic':
    source = synthetic.SyntheticSource(config.data.synthetic_examples, seed=config.seed)
    return source, source.metadata
  if config.data.source == 'ham10000':
    from skinjax.data import ham10000  # imports TFDS only when real data is used
    return ham10000.load(config.data.data_dir, config.data.prepared_size)
  raise ValueError(f"config.data.source={config.data.source!r}: use 'ham10000' or 'synthetic'.")


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What identifies the training data, cheaply; W/config.json records it to guard resumes."""
  if config.data.source == 'synthetic':
    return {'source': 'synthetic', 'num_examples': config.data.synthetic_examples,
            'seed': config.seed}
  if config.data.source == 'ham10000':
    from skinjax.data import ham10000
    return {'source': 'ham10000',
            **ham10000.fingerprint(config.data.data_dir, config.data.prepared_size)}
  raise ValueError(f"config.data.source={config.data.source!r}: use 'ham10000' or 'synthetic'.")


def split_indices(config: ml_collections.ConfigDict, metadata: dict) -> dict[str, np.ndarray]:
  splits = splits_lib.make_splits(metadata['label'], metadata['lesion_id'],
                                  fractions=tuple(config.data.split_fractions),
                                  seed=config.data.split_seed, method=config.data.split)
  splits_lib.check_every_class_present(splits, metadata['label'], NUM_CLASSES, CLASS_NAMES)
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

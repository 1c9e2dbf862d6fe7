"""Where training examples come from, as functions of the config: thin wrappers of the handle.

Each call opens the dataset again; code that needs several of these opens
`handle.PreparedDataset.open(config)` once and reads its attributes instead.
"""

import ml_collections
import numpy as np

from skinjax.data import datasets
from skinjax.data import handle


def open_source(config: ml_collections.ConfigDict):
  """(random-access source, metadata, description); see `handle.PreparedDataset`."""
  dataset = handle.PreparedDataset.open(config)
  return dataset.source, dataset.metadata, dataset.description


def describe(config: ml_collections.ConfigDict) -> datasets.DatasetDescription:
  return handle.PreparedDataset.open(config).description


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  return handle.PreparedDataset.open(config).fingerprint


def split_indices(config: ml_collections.ConfigDict, metadata: dict,
                  description: datasets.DatasetDescription) -> dict[str, np.ndarray]:
  return handle.split_indices(metadata, description, method=config.data.split,
                              fractions=config.data.split_fractions, seed=config.data.split_seed)


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

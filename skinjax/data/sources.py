"""Per-class loss weights of a training split (the data itself: `handle.PreparedDataset`)."""

import numpy as np


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

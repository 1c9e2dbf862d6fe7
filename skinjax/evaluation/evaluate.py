"""Runs a model over a split: padded global batches, a mask, every example counted exactly once."""

from typing import Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

from skinjax.runtime import sharding


def predict(predict_step: Callable, params, rest, batches: Iterable[dict], mesh,
            num_examples: int, num_classes: int) -> np.ndarray:
  """Softmax probabilities (num_examples, num_classes), in the order of the split's indices."""
  data = sharding.batch_sharding(mesh)
  probs = np.full((num_examples, num_classes), np.nan, np.float32)
  for batch in batches:
    images = jax.make_array_from_process_local_data(data, batch['image'])
    positions = jax.make_array_from_process_local_data(data, batch['position'])
    metadata = None  # patient metadata, for a model that takes it
    if 'metadata' in batch:
      metadata = jax.make_array_from_process_local_data(data, batch['metadata'])
    batch_probs = predict_step(params, rest, images, metadata)
    # Gather to every host: each one writes the full prediction table it reports from.
    batch_probs, positions = multihost_utils.process_allgather((batch_probs, positions), tiled=True)
    real = positions >= 0
    probs[positions[real]] = batch_probs[real]
  missing = np.isnan(probs[:, 0]).sum()
  if missing:
    raise RuntimeError(f'{missing} of {num_examples} examples were never evaluated.')
  return probs

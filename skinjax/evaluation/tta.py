"""Test-time augmentation: the softmax averaged over flipped and rotated views of each image.

Dermoscopy has no canonical orientation (training augments with flips and 90-degree turns), so
these views are all images the model could have been shown; averaging them steadies predictions.
The views are exact pixel permutations of the square evaluation image, done on the device.
"""

from typing import Callable

import jax.numpy as jnp

TTA_MODES = ('none', 'flip', 'flip_rot')


def _hflip(x):
  return x[:, :, ::-1]


def _vflip(x):
  return x[:, ::-1]


def _rot90(k: int):
  return lambda x: jnp.rot90(x, k, axes=(1, 2))


def views(mode: str) -> tuple[Callable, ...]:
  """NHWC -> NHWC view functions; the identity comes first.

  'flip': identity, horizontal, vertical and both flips. 'flip_rot': the 8 symmetries of the
  square (4 rotations, each with and without a horizontal flip).
  """
  identity = lambda x: x  # noqa: E731
  if mode == 'none':
    return (identity,)
  if mode == 'flip':
    return (identity, _hflip, _vflip, lambda x: _vflip(_hflip(x)))
  if mode == 'flip_rot':
    return tuple(view for k in range(4)
                 for view in (_rot90(k), lambda x, k=k: _rot90(k)(_hflip(x))))
  raise ValueError(f'--tta={mode!r} is not one of {", ".join(TTA_MODES)}.')


def with_tta(predict_step: Callable, mode: str) -> Callable:
  """Wraps a (params, rest, images[, metadata]) -> probabilities step to average over the `mode`
  views; an image's metadata is the same in every view."""
  if mode == 'none':
    return predict_step
  mode_views = views(mode)

  def tta_step(params, rest, images, metadata=None):
    return jnp.mean(jnp.stack([predict_step(params, rest, view(images), metadata)
                               for view in mode_views]), 0)

  return tta_step

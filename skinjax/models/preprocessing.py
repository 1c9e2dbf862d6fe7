"""Pixel normalisation per backbone, as `keras.applications.<model>.preprocess_input` does it.

Batches travel to the device as uint8 and are normalised inside the jitted step, so this is jnp only.
"""

import functools
from collections.abc import Callable

import jax.numpy as jnp

# Keras' 'caffe' mode works in BGR order with these ImageNet channel means (0..255 scale).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

PREPROCESSING_MODES = (
    'unit',           # x / 255: the from-scratch baseline
    'raw',            # 0..255 floats: EfficientNet normalises inside the model
    'caffe',          # RGB->BGR, minus the ImageNet mean, no std: VGG16, ResNet50
    'tf',             # x / 127.5 - 1: Xception
    'minus_one_one',  # the study's uniform [-1, 1] scaling for every backbone (same math as 'tf')
    'lite',           # (x - 127) / 128: EfficientNet-Lite's TF input scaling, which its weights expect
)


def normalize(images: jnp.ndarray, mode: str, dtype=jnp.float32) -> jnp.ndarray:
  """uint8 RGB NHWC images -> normalised floats in `dtype` (computed in float32)."""
  if mode not in PREPROCESSING_MODES:
    raise ValueError(f'Unknown preprocessing mode {mode!r}; valid modes: {PREPROCESSING_MODES}')
  x = jnp.asarray(images).astype(jnp.float32)
  if mode == 'unit':
    x = x / 255.0
  elif mode == 'caffe':
    x = x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
  elif mode in ('tf', 'minus_one_one'):
    x = x / 127.5 - 1.0
  elif mode == 'lite':
    x = (x - 127.0) / 128.0
  return x.astype(dtype)


def normaliser(backbone_mode: str, config) -> Callable:
  """The run's uint8 -> model input: the backbone's own Keras mode, or the study's [-1, 1].

  Training, evaluation and prediction all build it from the run's config, so they agree.
  """
  mode = backbone_mode if config.data.preprocessing == 'keras' else 'minus_one_one'
  return functools.partial(normalize, mode=mode, dtype=jnp.dtype(config.model.dtype))

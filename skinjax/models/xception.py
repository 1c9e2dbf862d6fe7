"""Xception, layer for layer as `keras.applications.xception`.

Joining a module path with '_' gives the Keras layer name: ('block2', 'sepconv1_bn') ->
'block2_sepconv1_bn'. The exceptions are the strided residual convs and their BatchNorms
(`residual_conv`, `residual_bn`): Keras leaves them unnamed ('conv2d_3', 'batch_normalization_3'),
so only their position tells them apart. `Xception.keras_layer_order` is that position.
"""

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.layers import SeparableConv, batch_norm, conv, dense, global_average_pool

# (block, input filters, filters of each separable conv); blocks 5-12 are the middle flow.
ENTRY_BLOCKS = (('block2', 64, (128, 128)), ('block3', 128, (256, 256)),
                ('block4', 256, (728, 728)))
MIDDLE_BLOCKS = tuple(f'block{i}' for i in range(5, 13))
EXIT_BLOCK = ('block13', 728, (728, 1024))


class Block1(nnx.Module):
  """Two 'valid' 3x3 convs (the first strided), each followed by BN and relu."""

  KERAS_LAYER_ORDER = ('conv1', 'conv1_bn', 'conv2', 'conv2_bn')

  def __init__(self, *, dtype, rngs: nnx.Rngs):
    self.conv1 = conv(3, 32, 3, strides=2, padding='VALID', use_bias=False, dtype=dtype, rngs=rngs)
    self.conv1_bn = batch_norm(32, dtype=dtype, rngs=rngs)
    self.conv2 = conv(32, 64, 3, padding='VALID', use_bias=False, dtype=dtype, rngs=rngs)
    self.conv2_bn = batch_norm(64, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nnx.relu(self.conv1_bn(self.conv1(x)))
    return nnx.relu(self.conv2_bn(self.conv2(x)))


class DownsamplingBlock(nnx.Module):
  """[relu] -> sepconv -> BN -> relu -> sepconv -> BN -> 3x3/2 max-pool, plus a strided 1x1 residual.

  Block2 follows block1's relu directly, so it has no leading relu; blocks 3, 4 and 13 do.
  """

  # Keras creates the residual branch first but lists it after the main branch (graph order).
  KERAS_LAYER_ORDER = ('sepconv1', 'sepconv1_bn', 'sepconv2', 'sepconv2_bn', 'residual_conv',
                       'residual_bn')

  def __init__(self, in_features: int, filters: tuple[int, int], *, leading_relu: bool, dtype,
               rngs: nnx.Rngs):
    self.leading_relu = leading_relu
    self.residual_conv = conv(in_features, filters[1], 1, strides=2, use_bias=False, dtype=dtype,
                              rngs=rngs)
    self.residual_bn = batch_norm(filters[1], dtype=dtype, rngs=rngs)
    self.sepconv1 = SeparableConv(in_features, filters[0], 3, dtype=dtype, rngs=rngs)
    self.sepconv1_bn = batch_norm(filters[0], dtype=dtype, rngs=rngs)
    self.sepconv2 = SeparableConv(filters[0], filters[1], 3, dtype=dtype, rngs=rngs)
    self.sepconv2_bn = batch_norm(filters[1], dtype=dtype, rngs=rngs)

  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    residual = self.residual_bn(self.residual_conv(inputs))
    x = nnx.relu(inputs) if self.leading_relu else inputs
    x = nnx.relu(self.sepconv1_bn(self.sepconv1(x)))
    x = self.sepconv2_bn(self.sepconv2(x))
    return cpu_conv.max_pool(x, (3, 3), strides=(2, 2), padding='SAME') + residual


class MiddleBlock(nnx.Module):
  """Three (relu -> sepconv -> BN) at 728 channels with an identity residual."""

  KERAS_LAYER_ORDER = tuple(f'sepconv{i}{bn}' for i in (1, 2, 3) for bn in ('', '_bn'))

  def __init__(self, *, dtype, rngs: nnx.Rngs):
    for i in (1, 2, 3):
      setattr(self, f'sepconv{i}', SeparableConv(728, 728, 3, dtype=dtype, rngs=rngs))
      setattr(self, f'sepconv{i}_bn', batch_norm(728, dtype=dtype, rngs=rngs))

  def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
    x = inputs
    for i in (1, 2, 3):
      x = getattr(self, f'sepconv{i}_bn')(getattr(self, f'sepconv{i}')(nnx.relu(x)))
    return x + inputs


class Block14(nnx.Module):
  """sepconv -> BN -> relu -> sepconv -> BN -> relu: the 2048-channel feature map."""

  KERAS_LAYER_ORDER = ('sepconv1', 'sepconv1_bn', 'sepconv2', 'sepconv2_bn')

  def __init__(self, *, dtype, rngs: nnx.Rngs):
    self.sepconv1 = SeparableConv(1024, 1536, 3, dtype=dtype, rngs=rngs)
    self.sepconv1_bn = batch_norm(1536, dtype=dtype, rngs=rngs)
    self.sepconv2 = SeparableConv(1536, 2048, 3, dtype=dtype, rngs=rngs)
    self.sepconv2_bn = batch_norm(2048, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nnx.relu(self.sepconv1_bn(self.sepconv1(x)))
    return nnx.relu(self.sepconv2_bn(self.sepconv2(x)))


class Xception(nnx.Module):
  """`block1` ... `block14` [, `predictions`].

  Without the top it returns block14's NHWC feature map; with it, float32 logits (Keras applies a
  softmax on top).
  """

  def __init__(self, *, include_top: bool = False, num_classes: int = 1000,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.include_top = include_top
    self.block1 = Block1(dtype=dtype, rngs=rngs)
    for name, in_features, filters in ENTRY_BLOCKS:
      setattr(self, name, DownsamplingBlock(in_features, filters, leading_relu=name != 'block2',
                                            dtype=dtype, rngs=rngs))
    for name in MIDDLE_BLOCKS:
      setattr(self, name, MiddleBlock(dtype=dtype, rngs=rngs))
    name, in_features, filters = EXIT_BLOCK
    setattr(self, name, DownsamplingBlock(in_features, filters, leading_relu=True, dtype=dtype,
                                          rngs=rngs))
    self.block14 = Block14(dtype=dtype, rngs=rngs)
    self.block_names = tuple(f'block{i}' for i in range(1, 15))
    self.num_features = 2048
    if include_top:
      self.predictions = dense(2048, num_classes, rngs=rngs)

  def layer_groups(self) -> list[str]:
    return [*self.block_names] + (['predictions'] if self.include_top else [])

  def keras_layer_order(self) -> list[tuple[str, ...]]:
    """Module paths of Keras' weighted layers, in `keras.Model.layers` order (see registry)."""
    layers = [(b, layer) for b in self.block_names for layer in getattr(self, b).KERAS_LAYER_ORDER]
    return layers + ([('predictions',)] if self.include_top else [])

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    del rngs  # Xception has no dropout or drop-connect.
    x = images
    for name in self.block_names:
      x = getattr(self, name)(x)
    if self.include_top:
      x = self.predictions(global_average_pool(x))
    return x

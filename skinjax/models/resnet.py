"""ResNet50 (v1), layer for layer as `keras.applications.resnet50`.

v1 puts the stride on the first 1x1 conv of a block and gives every conv a bias. BatchNorm
epsilon is 1.001e-5, not Keras' default 1e-3. Keras names its layers 'conv2_block1_1_conv';
`KERAS_SUFFIX` translates the attribute names used here ('conv2_block1' / 'conv1').
"""

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.layers import batch_norm, conv, dense, global_average_pool, zero_pad_2d

RESNET_BN_EPSILON = 1.001e-5

# (bottleneck filters, blocks, stride of the first block) for conv2 ... conv5.
RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

# Bottleneck attribute -> the suffix of its Keras layer name.
KERAS_SUFFIX = {
    'shortcut_conv': '0_conv', 'shortcut_bn': '0_bn',
    'conv1': '1_conv', 'bn1': '1_bn',
    'conv2': '2_conv', 'bn2': '2_bn',
    'conv3': '3_conv', 'bn3': '3_bn',
}


def _bn(features, dtype, rngs):
  return batch_norm(features, epsilon=RESNET_BN_EPSILON, dtype=dtype, rngs=rngs)


class Stem(nnx.Module):
  """ZeroPadding(3) -> 7x7/2 'valid' conv -> BN -> relu -> ZeroPadding(1) -> 3x3/2 max-pool.

  Explicit symmetric padding: Flax's 'SAME' would pad asymmetrically and shift every output.
  """

  def __init__(self, *, dtype, rngs: nnx.Rngs):
    self.conv = conv(3, 64, 7, strides=2, padding='VALID', dtype=dtype, rngs=rngs)
    self.bn = _bn(64, dtype, rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nnx.relu(self.bn(self.conv(zero_pad_2d(x, ((3, 3), (3, 3))))))
    # Zero padding (not -inf) is what Keras does; after the relu it cannot win the max anyway.
    return cpu_conv.max_pool(zero_pad_2d(x, ((1, 1), (1, 1))), (3, 3), strides=(2, 2))


class Bottleneck(nnx.Module):
  # Keras' graph order: the main branch's first two convs, then the shortcut and the last conv
  # side by side (both feed the add). `conv2_block1_0_conv` and `_3_conv` have the same shape in
  # stage 2, so a wrong order here would swap them silently.
  KERAS_LAYER_ORDER = ('conv1', 'bn1', 'conv2', 'bn2', 'shortcut_conv', 'conv3', 'shortcut_bn',
                       'bn3')

  def __init__(self, in_features: int, filters: int, *, strides: int, conv_shortcut: bool,
               dtype, rngs: nnx.Rngs):
    if conv_shortcut:
      self.shortcut_conv = conv(in_features, 4 * filters, 1, strides=strides, dtype=dtype,
                                rngs=rngs)
      self.shortcut_bn = _bn(4 * filters, dtype, rngs)
    else:
      self.shortcut_conv = self.shortcut_bn = None
    self.conv1 = conv(in_features, filters, 1, strides=strides, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(filters, dtype, rngs)
    self.conv2 = conv(filters, filters, 3, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(filters, dtype, rngs)
    self.conv3 = conv(filters, 4 * filters, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(4 * filters, dtype, rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shortcut = x if self.shortcut_conv is None else self.shortcut_bn(self.shortcut_conv(x))
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    x = self.bn3(self.conv3(x))
    return nnx.relu(x + shortcut)


class ResNet50(nnx.Module):
  """`conv1`, `conv2_block1` ... `conv5_block3` [, `predictions`].

  Without the top it returns conv5's NHWC feature map; with it, float32 logits (Keras applies a
  softmax on top).
  """

  def __init__(self, *, include_top: bool = False, num_classes: int = 1000,
               dtype=jnp.float32, rngs: nnx.Rngs):
    self.include_top = include_top
    self.conv1 = Stem(dtype=dtype, rngs=rngs)
    in_features, block_names = 64, []
    for stage, (filters, blocks, stride) in enumerate(RESNET50_STAGES, start=2):
      for b in range(1, blocks + 1):
        name = f'conv{stage}_block{b}'
        setattr(self, name, Bottleneck(in_features, filters, strides=stride if b == 1 else 1,
                                       conv_shortcut=b == 1, dtype=dtype, rngs=rngs))
        in_features = 4 * filters
        block_names.append(name)
    self.block_names = tuple(block_names)
    self.num_features = in_features
    if include_top:
      self.predictions = dense(in_features, num_classes, rngs=rngs)

  def layer_groups(self) -> list[str]:
    return ['conv1', *self.block_names] + (['predictions'] if self.include_top else [])

  def keras_layer_order(self) -> list[tuple[str, ...]]:
    """Module paths of Keras' weighted layers, in `keras.Model.layers` order (see registry)."""
    blocks = [(b, layer) for b in self.block_names for layer in Bottleneck.KERAS_LAYER_ORDER
              if getattr(getattr(self, b), layer) is not None]
    return [('conv1', 'conv'), ('conv1', 'bn'), *blocks] + (
        [('predictions',)] if self.include_top else [])

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    del rngs  # ResNet50 has no dropout or drop-connect.
    x = self.conv1(images)
    for name in self.block_names:
      x = getattr(self, name)(x)
    if self.include_top:
      x = self.predictions(global_average_pool(x))
    return x

"""EfficientNet B0-B7, layer for layer as `keras.applications.efficientnet`, and the skeleton that
EfficientNet-Lite shares.

Lite (see `efficientnet_lite`) is the same network with a few `Switches` flipped, as timm builds it
from one class: another activation, no squeeze-excite, TF 'SAME' padding, no normalisation inside,
fixed stem and head widths and unscaled first and last stages. The parameter paths are the same.

The structure mirrors the Keras layers so that ImageNet weights can be ported by name: joining a
module path with '_' gives the Keras layer name, e.g. ('block2a', 'se_reduce') -> 'block2a_se_reduce',
('stem', 'conv') -> 'stem_conv', ('top', 'bn') -> 'top_bn'. The one exception is the stem's
Normalization, which Keras names automatically ('normalization', 'normalization_1', ...).
"""

import dataclasses
import math
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.layers import (Buffer, batch_norm, correct_pad, dropout, global_average_pool,
                                   zero_pad_2d)

# Verbatim from Keras; `filters_*`/`repeats` are B0's and get scaled by the coefficients.
DEFAULT_BLOCKS_ARGS = (
    dict(kernel_size=3, repeats=1, filters_in=32, filters_out=16, expand_ratio=1,
         id_skip=True, strides=1, se_ratio=0.25),
    dict(kernel_size=3, repeats=2, filters_in=16, filters_out=24, expand_ratio=6,
         id_skip=True, strides=2, se_ratio=0.25),
    dict(kernel_size=5, repeats=2, filters_in=24, filters_out=40, expand_ratio=6,
         id_skip=True, strides=2, se_ratio=0.25),
    dict(kernel_size=3, repeats=3, filters_in=40, filters_out=80, expand_ratio=6,
         id_skip=True, strides=2, se_ratio=0.25),
    dict(kernel_size=5, repeats=3, filters_in=80, filters_out=112, expand_ratio=6,
         id_skip=True, strides=1, se_ratio=0.25),
    dict(kernel_size=5, repeats=4, filters_in=112, filters_out=192, expand_ratio=6,
         id_skip=True, strides=2, se_ratio=0.25),
    dict(kernel_size=3, repeats=1, filters_in=192, filters_out=320, expand_ratio=6,
         id_skip=True, strides=1, se_ratio=0.25),
)

# variant -> (width_coefficient, depth_coefficient, default image size, top dropout rate)
VARIANTS = {
    'b0': (1.0, 1.0, 224, 0.2),
    'b1': (1.0, 1.1, 240, 0.2),
    'b2': (1.1, 1.2, 260, 0.3),
    'b3': (1.2, 1.4, 300, 0.3),
    'b4': (1.4, 1.8, 380, 0.4),
    'b5': (1.6, 2.2, 456, 0.4),
    'b6': (1.8, 2.6, 528, 0.5),
    'b7': (2.0, 3.1, 600, 0.5),
}

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)

# Keras' CONV_KERNEL_INITIALIZER / DENSE_KERNEL_INITIALIZER, so from-scratch training matches too.
CONV_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, 'fan_out', 'truncated_normal')
# Keras' depthwise kernel is (kh, kw, C, 1) and its fan_out is kh*kw; Flax's grouped kernel is
# (kh, kw, 1, C), so the channel axis must not count towards fan_out.
DEPTHWISE_KERNEL_INIT = nnx.initializers.variance_scaling(
    2.0, 'fan_out', 'truncated_normal', in_axis=-1, out_axis=-2)
DENSE_KERNEL_INIT = nnx.initializers.variance_scaling(1.0 / 3.0, 'fan_out', 'uniform')

KERAS_EPSILON = 1e-7  # keras.backend.epsilon(), the floor of Normalization's std


def round_filters(filters: int, width_coefficient: float, divisor: int = 8) -> int:
  """Round the scaled number of filters to a multiple of `divisor`, never down by more than 10%."""
  filters *= width_coefficient
  new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new_filters < 0.9 * filters:
    new_filters += divisor
  return int(new_filters)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
  return int(math.ceil(depth_coefficient * repeats))


def stage_repeats(depth_coefficient: float, scale_end_stages: bool = True) -> list[int]:
  """Blocks per stage, scaled with depth; Lite keeps the first and last stages at B0's one block."""
  last = len(DEFAULT_BLOCKS_ARGS) - 1
  return [args['repeats'] if not scale_end_stages and i in (0, last)
          else round_repeats(args['repeats'], depth_coefficient)
          for i, args in enumerate(DEFAULT_BLOCKS_ARGS)]


@dataclasses.dataclass(frozen=True)
class Switches:
  """What sets an EfficientNet family apart; the defaults are Keras' B0-B7."""

  activation: Callable = nnx.swish
  # Squeeze-excite in every block (its width from the block args' se_ratio).
  squeeze_excite: bool = True
  # Keras pads stride-2 convs itself with correct_pad and runs them 'valid'. Without it the convs
  # use TF's 'SAME', which XLA's 'SAME' is: the odd pixel goes to the bottom/right.
  keras_padding: bool = True
  # Keras' Rescaling + Normalization in the stem; otherwise the inputs come normalised.
  normalizes_input: bool = True
  # Stem 32 and head 1280 filters whatever the width coefficient.
  fixed_stem_and_head: bool = False
  scale_end_stages: bool = True  # see stage_repeats


KERAS = Switches()


def _conv(in_features, out_features, kernel_size, *, strides=1, padding='SAME', use_bias=False,
          dtype, rngs) -> nnx.Conv:
  return cpu_conv.Conv(in_features, out_features, (kernel_size, kernel_size), strides=strides,
                       padding=padding, use_bias=use_bias, kernel_init=CONV_KERNEL_INIT,
                       dtype=dtype, param_dtype=jnp.float32,
                       conv_general_dilated=cpu_conv.conv_general_dilated, rngs=rngs)


def _pads_explicitly(switches: Switches, strides: int) -> bool:
  return switches.keras_padding and strides == 2


def _padding(switches: Switches, strides: int) -> str:
  return 'VALID' if _pads_explicitly(switches, strides) else 'SAME'


def _pad(x: jnp.ndarray, kernel_size: int) -> jnp.ndarray:
  """Keras' correct_pad before a stride-2 'valid' conv (see layers.correct_pad)."""
  return zero_pad_2d(x, correct_pad(x.shape[1:3], kernel_size))


class Normalization(nnx.Module):
  """Keras `layers.Normalization(axis=-1)`: (x - mean) / max(sqrt(variance), 1e-7).

  Keras keeps mean, variance and a scalar count as non-trainable weights; they are Buffers here.
  Unadapted Keras starts at mean 0, variance 1, count 0.
  """

  def __init__(self, mean, variance):
    self.mean = Buffer(jnp.asarray(mean, jnp.float32))
    self.variance = Buffer(jnp.asarray(variance, jnp.float32))
    self.count = Buffer(jnp.zeros((), jnp.int32))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return (x - self.mean[...]) / jnp.maximum(jnp.sqrt(self.variance[...]), KERAS_EPSILON)


class ConvBN(nnx.Module):
  """[pad] -> conv -> BatchNorm -> activation: the head (`top`, 1x1) and the stem's conv."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, strides: int = 1,
               switches: Switches, dtype, rngs: nnx.Rngs):
    self.kernel_size = kernel_size
    self.pads_explicitly = _pads_explicitly(switches, strides)
    self.activation = switches.activation
    self.conv = _conv(in_features, out_features, kernel_size, strides=strides,
                      padding=_padding(switches, strides), dtype=dtype, rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    if self.pads_explicitly:
      x = _pad(x, self.kernel_size)
    return self.activation(self.bn(self.conv(x)))


class Stem(ConvBN):
  """[Rescaling(1/255) -> Normalization -> Rescaling(1/sqrt(std))] -> conv3x3/2 -> BN -> act.

  The normalisation is Keras' (`switches.normalizes_input`); Lite takes normalised inputs.
  """

  def __init__(self, out_features: int, *, imagenet_normalization: bool = False,
               switches: Switches = KERAS, dtype, rngs: nnx.Rngs):
    if not switches.normalizes_input:
      self.normalization = None
    elif imagenet_normalization:
      # The values Keras' ImageNet weight files hold (see `normalize`).
      self.normalization = Normalization(IMAGENET_MEAN_RGB, IMAGENET_STDDEV_RGB)
    else:
      self.normalization = Normalization(jnp.zeros(3), jnp.ones(3))
    super().__init__(3, out_features, 3, strides=2, switches=switches, dtype=dtype, rngs=rngs)

  def normalize(self, images: jnp.ndarray) -> jnp.ndarray:
    """0..255 RGB -> network input, in float32 whatever the compute dtype (cheap and exact).

    Keras' ImageNet weight files store the ImageNet *std* in the Normalization 'variance', and
    Keras adds a Rescaling(1/sqrt(std)) exactly when it loads them, turning (x - mean)/sqrt(std)
    into (x - mean)/std. The rescaling has no weights, so it is decided here from the state: it
    applies when the variance holds those std values. A model built with weights=None (variance
    1) or ported from such a model behaves like Keras without it, and ImageNet weights like
    Keras with it, wherever the weights came from (port, checkpoint, resume).
    """
    x = images.astype(jnp.float32) * (1.0 / 255.0)
    x = self.normalization(x)
    variance = self.normalization.variance[...]
    holds_imagenet_std = jnp.all(
        jnp.abs(variance - jnp.asarray(IMAGENET_STDDEV_RGB, jnp.float32)) < 1e-6)
    # Keras' constants, computed in float64 like its Rescaling layer's.
    rescale = jnp.asarray([1.0 / math.sqrt(s) for s in IMAGENET_STDDEV_RGB], jnp.float32)
    return x * jnp.where(holds_imagenet_std, rescale, 1.0)

  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    return super().__call__(images if self.normalization is None else self.normalize(images))


class MBConvBlock(nnx.Module):
  """Keras `efficientnet.block`: inverted residual with squeeze-excite and drop-connect."""

  # Optional layers (expand_*, se_*) are None in the blocks that lack them.
  KERAS_LAYER_ORDER = ('expand_conv', 'expand_bn', 'dwconv', 'bn', 'se_reduce', 'se_expand',
                       'project_conv', 'project_bn')

  def __init__(
      self,
      *,
      filters_in: int,
      filters_out: int,
      kernel_size: int,
      strides: int,
      expand_ratio: int,
      se_ratio: float,
      id_skip: bool,
      drop_rate: float,
      switches: Switches = KERAS,
      dtype,
      rngs: nnx.Rngs,
  ):
    self.kernel_size = kernel_size
    self.pads_explicitly = _pads_explicitly(switches, strides)
    self.activation = switches.activation
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
      self.expand_conv = _conv(filters_in, filters, 1, dtype=dtype, rngs=rngs)
      self.expand_bn = batch_norm(filters, dtype=dtype, rngs=rngs)
    else:
      self.expand_conv = self.expand_bn = None
    self.dwconv = nnx.Conv(
        filters, filters, (kernel_size, kernel_size), strides=strides,
        padding=_padding(switches, strides), feature_group_count=filters, use_bias=False,
        kernel_init=DEPTHWISE_KERNEL_INIT, dtype=dtype, param_dtype=jnp.float32,
        conv_general_dilated=cpu_conv.conv_general_dilated, rngs=rngs)
    self.bn = batch_norm(filters, dtype=dtype, rngs=rngs)
    if switches.squeeze_excite and 0 < se_ratio <= 1:
      # The squeeze width comes from the block *input* filters, not the expanded ones.
      filters_se = max(1, int(filters_in * se_ratio))
      self.se_reduce = _conv(filters, filters_se, 1, use_bias=True, dtype=dtype, rngs=rngs)
      self.se_expand = _conv(filters_se, filters, 1, use_bias=True, dtype=dtype, rngs=rngs)
    else:
      self.se_reduce = self.se_expand = None
    self.project_conv = _conv(filters, filters_out, 1, dtype=dtype, rngs=rngs)
    self.project_bn = batch_norm(filters_out, dtype=dtype, rngs=rngs)
    self.identity_skip = id_skip and strides == 1 and filters_in == filters_out
    if self.identity_skip and drop_rate > 0:
      # Stochastic depth: drop the whole residual branch per example (noise_shape (None,1,1,1)).
      self.drop = nnx.Dropout(drop_rate, broadcast_dims=(1, 2, 3))
    else:
      self.drop = None

  def __call__(self, inputs: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    x = inputs
    if self.expand_conv is not None:
      x = self.activation(self.expand_bn(self.expand_conv(x)))
    if self.pads_explicitly:
      x = _pad(x, self.kernel_size)
    x = self.activation(self.bn(self.dwconv(x)))
    if self.se_reduce is not None:
      se = global_average_pool(x, keepdims=True)
      se = self.activation(self.se_reduce(se))
      se = nnx.sigmoid(self.se_expand(se))
      x = x * se.astype(x.dtype)
    x = self.project_bn(self.project_conv(x))
    if self.identity_skip:
      if self.drop is not None:
        x = dropout(self.drop, x, rngs)
      x = x + inputs
    return x


class EfficientNet(nnx.Module):
  """EfficientNet backbone: `stem`, `block1a` ... `block7x`, `top` [, `top_dropout`, `predictions`].

  Without the top it returns the NHWC feature map of `top`; with it, float32 logits (no softmax).
  With Keras' switches the inputs are 0..255 floats (RGB) that the model normalises itself, and
  `imagenet_normalization=True` starts the stem at the ImageNet normalisation (see
  `Stem.normalize`); Lite's switches take inputs already normalised.
  """

  def __init__(
      self,
      width_coefficient: float,
      depth_coefficient: float,
      dropout_rate: float,
      drop_connect_rate: float = 0.2,
      *,
      switches: Switches = KERAS,
      include_top: bool = False,
      num_classes: int = 1000,
      imagenet_normalization: bool = False,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    def stem_or_head_filters(n):
      return n if switches.fixed_stem_and_head else round_filters(n, width_coefficient)

    self.include_top = include_top
    stem_filters = stem_or_head_filters(32)
    self.stem = Stem(stem_filters, imagenet_normalization=imagenet_normalization,
                     switches=switches, dtype=dtype, rngs=rngs)

    repeats = stage_repeats(depth_coefficient, switches.scale_end_stages)
    total_blocks = float(sum(repeats))
    block_names = []
    filters_out = stem_filters
    for i, (args, stage_blocks) in enumerate(zip(DEFAULT_BLOCKS_ARGS, repeats)):
      # Each stage takes the previous one's width, the first the stem's.
      filters_in, filters_out = filters_out, round_filters(args['filters_out'], width_coefficient)
      for j in range(stage_blocks):
        name = f'block{i + 1}{chr(j + 97)}'
        # Only the first block of a stage changes stride and width.
        setattr(self, name, MBConvBlock(
            filters_in=filters_in if j == 0 else filters_out,
            filters_out=filters_out,
            kernel_size=args['kernel_size'],
            strides=args['strides'] if j == 0 else 1,
            expand_ratio=args['expand_ratio'],
            se_ratio=args['se_ratio'],
            id_skip=args['id_skip'],
            drop_rate=drop_connect_rate * len(block_names) / total_blocks,
            switches=switches,
            dtype=dtype,
            rngs=rngs,
        ))
        block_names.append(name)
    self.block_names = tuple(block_names)

    self.num_features = stem_or_head_filters(1280)
    self.top = ConvBN(filters_out, self.num_features, 1, switches=switches, dtype=dtype, rngs=rngs)
    if include_top:
      self.top_dropout = nnx.Dropout(dropout_rate)
      self.predictions = nnx.Linear(self.num_features, num_classes, kernel_init=DENSE_KERNEL_INIT,
                                    dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)

  def layer_groups(self) -> list[str]:
    return ['stem', *self.block_names, 'top'] + (['predictions'] if self.include_top else [])

  def keras_layer_order(self) -> list[tuple[str, ...]]:
    """Module paths of Keras' weighted layers, in `keras.Model.layers` order (see registry).

    Keras' switches only: Lite has no Keras weights (nor the stem's normalization).
    """
    order = [('stem', 'normalization'), ('stem', 'conv'), ('stem', 'bn')]
    for name in self.block_names:
      block = getattr(self, name)
      order += [(name, layer) for layer in MBConvBlock.KERAS_LAYER_ORDER
                if getattr(block, layer) is not None]
    order += [('top', 'conv'), ('top', 'bn')]
    return order + ([('predictions',)] if self.include_top else [])

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    x = self.stem(images)
    for name in self.block_names:
      x = getattr(self, name)(x, rngs=rngs)
    x = self.top(x)
    if self.include_top:
      x = dropout(self.top_dropout, global_average_pool(x), rngs)
      x = self.predictions(x)
    return x


def build(variant: str, **kwargs) -> EfficientNet:
  """EfficientNet-`variant` ('b0'..'b7') with the Keras width, depth and dropout of VARIANTS."""
  width, depth, _, dropout_rate = VARIANTS[variant]
  return EfficientNet(width, depth, dropout_rate, **kwargs)

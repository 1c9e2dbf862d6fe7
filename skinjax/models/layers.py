"""Small helpers shared by the backbones, kept close to the Keras layers they stand in for."""

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv

# Keras' BatchNormalization defaults. Flax's own epsilon is 1e-5, so it is always passed explicitly.
KERAS_BN_EPSILON = 1e-3
KERAS_BN_MOMENTUM = 0.99


def dropout(module: nnx.Dropout, x: jnp.ndarray, rngs: nnx.Rngs | None) -> jnp.ndarray:
  """module(x, rngs=rngs); without rngs where there are none (inference), because jax2onnx's
  stand-in for nnx.Dropout, traced for the ONNX export, takes no rngs argument."""
  return module(x) if rngs is None else module(x, rngs=rngs)


class Buffer(nnx.Variable):
  """A constant that belongs to the model state but is never optimised.

  Optimisers and gradients select `nnx.Param`, so a Buffer is skipped by them while it is still
  saved in checkpoints and filled by the Keras weight port (e.g. EfficientNet's Normalization
  mean/variance/count, which Keras stores as non-trainable weights).
  """


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm whose inference arithmetic is Keras' own, in float32.

  Keras computes x * inv + (beta - mean * inv) with inv = gamma * rsqrt(var + eps); Flax computes
  (x - mean) * inv + beta, and in the compute dtype. The maths is the same, the rounding is not,
  and a deep network with far-off statistics can amplify a last-bit difference into another top-5.
  Training mode (batch statistics, moving-average updates) is Flax's, which matches Keras' maths.
  """

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    if use_running_average is None:
      use_running_average = self.use_running_average
    if not use_running_average:
      if (mask is not None or self.axis != -1 or self.axis_name is not None
          or self.scale is None or self.bias is None):
        return super().__call__(x, use_running_average=False, mask=mask)
      y, mean, var = normalise_with_batch_statistics(
          x, self.scale[...], self.bias[...], self.epsilon)
      # As Flax updates them: the moving statistics are state, not differentiated.
      self.mean[...] = jax.lax.stop_gradient(
          self.momentum * self.mean[...] + (1 - self.momentum) * mean)
      self.var[...] = jax.lax.stop_gradient(
          self.momentum * self.var[...] + (1 - self.momentum) * var)
      return y.astype(self.dtype or x.dtype)
    # Keras also upcasts bfloat16 inputs here: the statistics do not survive bfloat16 rounding.
    inv = jax.lax.rsqrt(self.var[...] + self.epsilon) * self.scale[...]
    offset = -self.mean[...] * inv + self.bias[...]
    return (x.astype(jnp.float32) * inv + offset).astype(self.dtype or x.dtype)


# Training-mode BatchNorm over the last axis with its gradient written out, rather than
# differentiated through Flax's arithmetic. The values are Keras' (x * inv + (beta - mean * inv));
# the point is the memory traffic on a CPU, where this step is bandwidth-bound: differentiating
# (x - mean) * inv + beta made XLA keep x - mean as a whole extra activation per layer, written
# in the forward pass and read again in the backward one, while here the backward pass is two
# per-feature sums and one elementwise pass over x and dy.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalise_with_batch_statistics(x, scale, bias, epsilon: float):
  """(x normalised by its batch statistics, then scaled and shifted; the batch mean; the batch
  variance), computed in float32 whatever x's dtype."""
  return _normalise_forward(x, scale, bias, epsilon)[0]


def _normalise_forward(x, scale, bias, epsilon):
  x32 = x.astype(jnp.float32)
  mean, var = cpu_conv.batch_norm_statistics(x32)
  inv_std = jax.lax.rsqrt(var + epsilon)
  inv = inv_std * scale
  return (x32 * inv + (bias - mean * inv), mean, var), (x, mean, inv_std, scale)


def _normalise_backward(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv_std, scale = residuals
  dy, dmean, dvar = (c.astype(jnp.float32) for c in cotangents)
  count = x.size // x.shape[-1]
  x32 = x.astype(jnp.float32)
  dbias, dy_centred = cpu_conv.batch_norm_grad_sums(x32, dy, mean)
  dscale = dy_centred * inv_std
  # Where the statistics are jnp (not the native passes), the barrier stops XLA from merging this
  # x - mean with the variance's into one more kept buffer: computed here, it fuses into dx's pass.
  centred = x32 - jax.lax.optimization_barrier(mean)
  # y = centred * inv_std * scale + bias, where mean and inv_std depend on x too; the last two
  # terms carry the gradients of the returned statistics (zero when only the moving averages,
  # which are not differentiated, read them).
  dx = (scale * inv_std * (dy - dbias / count - centred * (inv_std * inv_std) * dy_centred / count)
        + dmean / count + dvar * (2 / count) * centred)
  return dx.astype(x.dtype), dscale, dbias


normalise_with_batch_statistics.defvjp(_normalise_forward, _normalise_backward)


def batch_norm(
    num_features: int,
    *,
    epsilon: float = KERAS_BN_EPSILON,
    momentum: float = KERAS_BN_MOMENTUM,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.BatchNorm:
  """BatchNorm with Keras semantics (Flax's `momentum` means the same as Keras' `momentum`)."""
  return BatchNorm(
      num_features,
      epsilon=epsilon,
      momentum=momentum,
      dtype=dtype,
      param_dtype=jnp.float32,
      # Keras computes the batch variance as E[(x - E[x])^2]; the one-pass E[x^2] - E[x]^2
      # loses precision on activations with a large mean.
      use_fast_variance=False,
      rngs=rngs,
  )


def correct_pad(
    input_hw: tuple[int, int], kernel_size: int | tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Keras `imagenet_utils.correct_pad`: the zero padding before a stride-2 'valid' conv.

  It pads one pixel less at the top/left of even-sized inputs. Flax's 'SAME' would pad the
  bottom/right instead, shifting every output pixel, so the ported weights need this exact padding.
  """
  if isinstance(kernel_size, int):
    kernel_size = (kernel_size, kernel_size)
  adjust = (1 - input_hw[0] % 2, 1 - input_hw[1] % 2)
  correct = (kernel_size[0] // 2, kernel_size[1] // 2)
  return ((correct[0] - adjust[0], correct[0]), (correct[1] - adjust[1], correct[1]))


def zero_pad_2d(x: jnp.ndarray, padding: tuple[tuple[int, int], tuple[int, int]]) -> jnp.ndarray:
  """Keras `ZeroPadding2D` on an NHWC batch."""
  return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))


def global_average_pool(x: jnp.ndarray, *, keepdims: bool = False) -> jnp.ndarray:
  """Mean over H and W, accumulated and returned in float32 (a bfloat16 sum over many pixels drifts)."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=keepdims)


# Keras' Conv2D/Dense/SeparableConv2D default; EfficientNet overrides it with its own.
GLOROT_UNIFORM = nnx.initializers.glorot_uniform()


def conv(in_features: int, out_features: int, kernel_size: int, *, strides: int = 1,
         padding='SAME', use_bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """Keras `Conv2D` defaults: glorot-uniform kernel, zero bias, float32 parameters."""
  return cpu_conv.Conv(in_features, out_features, (kernel_size, kernel_size), strides=strides,
                       padding=padding, use_bias=use_bias, kernel_init=GLOROT_UNIFORM,
                       dtype=dtype, param_dtype=jnp.float32,
                       conv_general_dilated=cpu_conv.conv_general_dilated, rngs=rngs)


def dense(in_features: int, out_features: int, *, rngs: nnx.Rngs) -> nnx.Linear:
  """Keras `Dense` defaults; dense tops run in float32 (they are small and produce logits)."""
  return nnx.Linear(in_features, out_features, kernel_init=GLOROT_UNIFORM, dtype=jnp.float32,
                    param_dtype=jnp.float32, rngs=rngs)


class SeparableConv(nnx.Module):
  """Keras `SeparableConv2D` (depth multiplier 1): a depthwise conv, then a 1x1 pointwise conv.

  Keras keeps the two kernels in one layer ('depthwise_kernel' (kh, kw, C, 1) and
  'pointwise_kernel' (1, 1, C, F)); here they are two convs, the depthwise one in Flax's grouped
  layout (kh, kw, 1, C).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               use_bias: bool = False, dtype, rngs: nnx.Rngs):
    self.depthwise = nnx.Conv(
        in_features, in_features, (kernel_size, kernel_size), padding='SAME',
        feature_group_count=in_features, use_bias=False, kernel_init=GLOROT_UNIFORM, dtype=dtype,
        param_dtype=jnp.float32, conv_general_dilated=cpu_conv.conv_general_dilated, rngs=rngs)
    self.pointwise = conv(in_features, out_features, 1, use_bias=use_bias, dtype=dtype, rngs=rngs)

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    return self.pointwise(self.depthwise(x))

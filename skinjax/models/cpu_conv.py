"""A drop-in `lax.conv_general_dilated` that is much faster for training on CPU.

Float32 2-D convolutions (groups 1 or depthwise) go to oneDNN's primitives through jax.ffi
(skinjax.kernels), forward and backward: 2-12x faster per layer than the rewrites below
(scripts/benchmark_conv.py), and `Conv` lets oneDNN add the bias too. Where those kernels are
unavailable or switched off ($SKINJAX_CPU_KERNELS=xla), and for bfloat16, the pure-JAX rewrites
below do the work. Other backends get lax.conv_general_dilated unchanged.

XLA's CPU convolution emitter is slow for two kinds of convolution that dominate the backbones'
FLOPs or time, and slower still for their gradients:
- 1x1 convolutions (two thirds of ResNet50's convs, most of EfficientNet's FLOPs): written as a
  matmul they are 1.3-4x faster forward+backward (scripts/benchmark_train.py; ResNet50 bottleneck
  shapes);
- depthwise convolutions (EfficientNet, Xception): written as a sum of k*k shifted, per-channel
  multiplies, which XLA fuses into one loop, they are 5-18x faster forward+backward.

Both rewrites compute the same sums as the convolution (the tests compare them with
lax.conv_general_dilated), and the parameters keep Flax's layout, so checkpoints and ported
weights are unaffected. Other convolutions, other layouts and every non-CPU backend (cuDNN and the
TPU compiler have fast kernels for these) go to lax.conv_general_dilated unchanged.

Flax's nnx.Conv takes the function as its `conv_general_dilated` argument; see layers.conv.

`max_pool` does the same for max-pooling, whose gradient XLA's CPU backend computes with a slow
select-and-scatter. With the native kernels, float32 pools are two loops of
skinjax/kernels/max_pool.cc; otherwise the maximum over the window's strided slices gives the same
values, and with its own gradient (to the first maximum, as select-and-scatter) forward+backward
is ~9x faster than XLA's for small_cnn's and VGG16's 2x2 pools and ~1.5x for ResNet50's 3x3 stem
pool (the native loops take about 4% more off ResNet50's whole step).

`portable_ops()` switches every fast path off while a model is traced for another runtime (ONNX
export): the graph then holds plain convolutions and max-pools, which every runtime accelerates,
instead of shifted-slice sums, matmuls or calls into this process's native library.
"""

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from skinjax import kernels

# The layout nnx.Conv uses for 2-D inputs: NHWC activations, HWIO kernels.
_NHWC_HWIO_NAMES = ('NHWC', 'HWIO', 'NHWC')
_NHWC_HWIO = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC_HWIO_NAMES)

_PORTABLE = contextvars.ContextVar('portable_ops', default=False)


@contextlib.contextmanager
def portable_ops():
  """Within it, lax.conv_general_dilated and nnx.max_pool only, on every backend."""
  token = _PORTABLE.set(True)
  try:
    yield
  finally:
    _PORTABLE.reset(token)


def _fast_paths_apply() -> bool:
  return jax.default_backend() == 'cpu' and not _PORTABLE.get()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, **kwargs):
  """lax.conv_general_dilated, with CPU fast paths for 1x1 and depthwise 2-D convolutions."""
  args = (lhs, rhs, window_strides, padding)
  options = dict(lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                 dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
                 batch_group_count=batch_group_count, precision=precision,
                 preferred_element_type=preferred_element_type, **kwargs)
  if not _has_fast_path(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                        batch_group_count, kwargs):
    return lax.conv_general_dilated(*args, **options)
  pads = _onednn_pads(lhs, rhs, window_strides, padding, feature_group_count,
                      preferred_element_type)
  if pads is not None:
    from skinjax.kernels import conv as native  # noqa: PLC0415 (loaded with the library)
    return native.conv(tuple(window_strides), pads, feature_group_count, lhs, rhs)
  kh, kw, kernel_in, out_features = rhs.shape
  depthwise = _is_depthwise(lhs, rhs, feature_group_count)
  if (kh, kw) == (1, 1) and feature_group_count == 1:
    return _pointwise(lhs, rhs, window_strides, padding, precision, preferred_element_type)
  if depthwise:
    return _depthwise(lhs, rhs, window_strides, padding, preferred_element_type)
  return lax.conv_general_dilated(*args, **options)


def _has_fast_path(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, batch_group_count,
                   kwargs) -> bool:
  if not _fast_paths_apply() or lhs.ndim != 4 or batch_group_count != 1:
    return False
  if kwargs.get('out_sharding') is not None:
    return False
  if any(d != 1 for d in (lhs_dilation or ())) or any(d != 1 for d in (rhs_dilation or ())):
    return False
  return lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC_HWIO


def _is_depthwise(lhs, rhs, feature_group_count) -> bool:
  _, _, kernel_in, out_features = rhs.shape
  return feature_group_count == lhs.shape[-1] == out_features and kernel_in == 1


def _onednn_pads(lhs, rhs, window_strides, padding, feature_group_count, preferred_element_type):
  """The explicit (low, high) pads when oneDNN takes this NHWC/HWIO convolution, else None.

  oneDNN takes float32 dense and depthwise convolutions with non-negative pads, when its kernels
  are on ($SKINJAX_CPU_KERNELS) and the backend is the CPU; callers checked the layout.
  """
  if not ((feature_group_count == 1 or _is_depthwise(lhs, rhs, feature_group_count))
          and _is_float32(lhs, rhs, preferred_element_type)):
    return None
  pads = padding
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  pads = tuple((int(low), int(high)) for low, high in pads)
  if min(min(pads)) < 0 or not kernels.onednn_enabled():
    return None
  return pads


class Conv(nnx.Conv):
  """nnx.Conv whose bias, where oneDNN runs the convolution, is added by oneDNN in the same pass
  (and its gradient comes from the kernel gradient's pass over dy): one pass over the output
  less, forward and backward. The parameters and every other case are nnx.Conv's own."""

  def __call__(self, inputs, out_sharding=None):
    if (self.bias is None or out_sharding is not None or self.mask is not None
        or self.dtype not in (None, jnp.float32) or not _lax_padding(self.padding)
        or not _has_fast_path(inputs, self.kernel[...], _pair(self.input_dilation),
                              _pair(self.kernel_dilation), _NHWC_HWIO_NAMES, 1, {})):
      return super().__call__(inputs, out_sharding)
    kernel, bias, strides = self.kernel[...], self.bias[...], _pair(self.strides)
    pads = _onednn_pads(inputs, kernel, strides, self.padding, self.feature_group_count, None)
    if pads is None or bias.dtype != jnp.float32:
      return super().__call__(inputs, out_sharding)
    from skinjax.kernels import conv as native  # noqa: PLC0415 (loaded with the library)
    return native.conv(strides, pads, self.feature_group_count, inputs, kernel, bias)


def _lax_padding(padding) -> bool:
  """Whether nnx.Conv hands this padding to the convolution unchanged: 'SAME', 'VALID' or pairs."""
  if isinstance(padding, str):
    return padding in ('SAME', 'VALID')
  return (not isinstance(padding, int) and len(padding) == 2
          and all(not isinstance(pair, int) and len(pair) == 2 for pair in padding))


def _pair(value) -> tuple[int, int]:
  if value is None:
    return (1, 1)
  return (value, value) if isinstance(value, int) else tuple(value)


def _is_float32(lhs, rhs, preferred_element_type) -> bool:
  return (lhs.dtype == rhs.dtype == jnp.float32
          and preferred_element_type in (None, jnp.float32, jnp.dtype(jnp.float32)))


def _native_kernels_take(*arrays) -> bool:
  """Whether the native kernels' BatchNorm sums and max-pool take these NHWC arrays: float32, on
  the CPU, with the kernels on."""
  return (_fast_paths_apply() and arrays[0].ndim == 4
          and all(a.dtype == jnp.float32 for a in arrays) and kernels.onednn_enabled())


def batch_norm_statistics(x):
  """Per-feature mean and variance of float32 x over every axis but the last, in two passes as
  Keras computes them: E[x], then E[(x - E[x])^2] (the one-pass E[x^2] - E[x]^2 loses precision
  on activations with a large mean). On the CPU with the native kernels, each pass is one call
  of skinjax/kernels/batch_norm.cc over NHWC activations; else, and as its reference, jnp."""
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  if not _native_kernels_take(x):
    mean = x.mean(axes)
    return mean, jnp.square(x - mean).mean(axes)
  from skinjax.kernels import batch_norm  # noqa: PLC0415 (loaded with the convolutions)
  mean = batch_norm.moments(x, jnp.zeros(x.shape[-1], jnp.float32))[0] / count
  sum_centred, sum_squares = batch_norm.moments(x, mean)
  # The first sum is zero but for the rounding of the mean, which it corrects (Chan et al.).
  return mean, sum_squares / count - jnp.square(sum_centred / count)


def batch_norm_grad_sums(x, dy, mean):
  """(sum of dy, sum of dy * (x - mean)) over every axis but the last: BatchNorm's backward sums
  (skinjax.models.layers), for float32 x and dy. On the CPU with the native kernels, one pass of
  skinjax/kernels/batch_norm.cc over NHWC activations; else, and as its reference, jnp."""
  if _native_kernels_take(x, dy):
    from skinjax.kernels import batch_norm  # noqa: PLC0415 (loaded with the convolutions)
    return batch_norm.grad_sums(x, dy, mean)
  axes = tuple(range(x.ndim - 1))
  return dy.sum(axes), (dy * (x - mean)).sum(axes)


def max_pool(x, window_shape, strides, padding='VALID'):
  """nnx.max_pool over the H and W axes of an NHWC input, with CPU fast paths: native loops for
  float32 with the kernels on, else strided slices with a custom gradient."""
  if not _fast_paths_apply() or x.ndim != 4:
    # Keywords: jax2onnx's stand-in for nnx.max_pool, traced for export, takes only those.
    return nnx.max_pool(x, window_shape=window_shape, strides=strides, padding=padding)
  # Static arguments of the custom gradient must be hashable: explicit pads become tuples.
  pads = padding if isinstance(padding, str) else tuple(tuple(pair) for pair in padding)
  if _native_kernels_take(x):
    from skinjax.kernels import max_pool as native  # noqa: PLC0415 (loaded with the library)
    if isinstance(pads, str):
      pads = tuple(lax.padtype_to_pads(x.shape[1:3], window_shape, strides, pads))
    return native.max_pool(x, tuple(window_shape), tuple(strides), pads)
  return _cpu_max_pool(x, tuple(window_shape), tuple(strides), pads)


def _windows(x, window_shape, strides, padding):
  """(window positions, N, out_h, out_w, C): every pixel each output's window covers."""
  padded = _padded(x, window_shape, strides, padding, value=-jnp.inf)
  return jnp.stack([window_slice for _, _, window_slice in _taps(padded, window_shape, strides)])


# A custom gradient, because differentiating the maximum itself proved fragile: JAX's rule
# compares each input with the maximum, and in a whole train step that gradient changed with the
# compilation (1- and 8-device steps differed by up to 78% of an update), presumably as XLA
# recomputed the compared values in other fusions with other rounding. Instead the forward pass
# records which position won, and the backward pass routes the whole gradient there: the first
# maximum, as XLA's select-and-scatter does.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _cpu_max_pool(x, window_shape, strides, padding):
  return jnp.max(_windows(x, window_shape, strides, padding), axis=0)


def _cpu_max_pool_forward(x, window_shape, strides, padding):
  windows = _windows(x, window_shape, strides, padding)
  winner = jnp.argmax(windows, axis=0)
  return jnp.take_along_axis(windows, winner[None], axis=0)[0], (x, winner)


def _cpu_max_pool_backward(window_shape, strides, padding, residuals, grad):
  x, winner = residuals
  positions = jnp.arange(window_shape[0] * window_shape[1]).reshape(-1, 1, 1, 1, 1)
  per_window = jnp.where(positions == winner[None], grad[None], jnp.zeros((), grad.dtype))
  # _windows only pads and slices x, so its vjp scatters each window's gradient back in place.
  _, scatter = jax.vjp(lambda x: _windows(x, window_shape, strides, padding), x)
  return scatter(per_window)


_cpu_max_pool.defvjp(_cpu_max_pool_forward, _cpu_max_pool_backward)


def _padded(x, kernel_hw, strides, padding, value=0.0):
  """The input padded with `value` as the convolution would pad it ('SAME', 'VALID' or pairs)."""
  pads = padding
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x.shape[1:3], kernel_hw, strides, padding)
  if any(low < 0 or high < 0 for low, high in pads):
    raise ValueError(f'negative convolution padding {pads} is not supported')
  if all(low == high == 0 for low, high in pads):
    return x
  return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=jnp.asarray(value, x.dtype))


def _taps(x, kernel_hw, strides):
  """For each kernel tap (i, j): the input pixels it multiplies, as an output-sized strided slice."""
  out_h = (x.shape[1] - kernel_hw[0]) // strides[0] + 1
  out_w = (x.shape[2] - kernel_hw[1]) // strides[1] + 1
  for i in range(kernel_hw[0]):
    for j in range(kernel_hw[1]):
      yield i, j, lax.slice(x, (0, i, j, 0),
                            (x.shape[0], i + (out_h - 1) * strides[0] + 1,
                             j + (out_w - 1) * strides[1] + 1, x.shape[3]),
                            (1, strides[0], strides[1], 1))


def _pointwise(lhs, rhs, strides, padding, precision, preferred_element_type):
  ((_, _, x),) = _taps(_padded(lhs, (1, 1), strides, padding), (1, 1), strides)
  return lax.dot_general(x, rhs[0, 0], (((3,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)


def _depthwise(lhs, rhs, strides, padding, preferred_element_type):
  kernel_hw = rhs.shape[:2]
  # bfloat16 products are summed in float32, as the convolution accumulates them.
  accumulate = jnp.promote_types(lhs.dtype, jnp.float32)
  out = None
  for i, j, x in _taps(_padded(lhs, kernel_hw, strides, padding), kernel_hw, strides):
    term = x.astype(accumulate) * rhs[i, j, 0].astype(accumulate)
    out = term if out is None else out + term
  return out.astype(preferred_element_type or lhs.dtype)

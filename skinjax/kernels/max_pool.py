"""Max-pooling over H and W of float32 NHWC activations, and its gradient, in native loops.

`max_pool(x, window, strides, pads)` computes nnx.max_pool's values; its gradient goes, as XLA's
select-and-scatter sends it, to each window's first maximum, which the forward pass records (its
window position, one byte per output). Both halves are XLA FFI custom calls to
skinjax/kernels/max_pool.cc (see there for why). Several devices: each pools its own part of the
batch (skinjax.kernels.conv.partitioned), forward and backward.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from skinjax.kernels import conv

# (XLA target name, the library's symbol) of each handler; skinjax.kernels registers them.
TARGETS = (('skinjax_max_pool_forward', 'SkinjaxMaxPoolForward'),
           ('skinjax_max_pool_backward', 'SkinjaxMaxPoolBackward'))


def _attributes(window, strides, pads):
  return dict(window=np.asarray(window, np.int64), **conv.window_attributes(strides, pads))


# `geometry`: (input shape, window, strides, pads), static and hashable.
def _forward_local(x, *, geometry):
  _, window, strides, pads = geometry
  out_hw = conv.output_hw(x.shape, window, strides, pads)
  shape = (x.shape[0], *out_hw, x.shape[3])
  results = (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.uint8))
  return tuple(jax.ffi.ffi_call('skinjax_max_pool_forward', results, vmap_method='sequential')(
      x, **_attributes(window, strides, pads)))


def _backward_local(grad, winner, *, geometry):
  x_shape, window, strides, pads = geometry
  result = jax.ShapeDtypeStruct((grad.shape[0], *x_shape[1:]), jnp.float32)
  return jax.ffi.ffi_call('skinjax_max_pool_backward', result, vmap_method='sequential')(
      grad, winner, **_attributes(window, strides, pads))


_forward = conv.partitioned(_forward_local, rule='b h w c -> b y z d, b u v e', batch_operands=1,
                            sum_over_batch=False)
_backward = conv.partitioned(_backward_local, rule='b y z c, b u v d -> b h w e',
                             batch_operands=2, sum_over_batch=False)


def max_pool(x, window: tuple[int, int], strides: tuple[int, int],
             pads: tuple[tuple[int, int], tuple[int, int]]):
  """NHWC float32 x; explicit (low, high) pads, through which no window position wins."""
  return _pool(x.shape, window, strides, pads, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _pool(x_shape, window, strides, pads, x):
  return _forward((x_shape, window, strides, pads), x)[0]


def _pool_forward(x_shape, window, strides, pads, x):
  return _forward((x_shape, window, strides, pads), x)  # the maxima, and the winners as residuals


def _pool_backward(x_shape, window, strides, pads, winner, grad):
  return (_backward((x_shape, window, strides, pads), grad, winner),)


_pool.defvjp(_pool_forward, _pool_backward)

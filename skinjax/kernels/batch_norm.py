"""BatchNorm's backward sums, sum(dy) and sum(dy * (x - mean)) per feature, in one native pass.

skinjax.models.layers' BatchNorm computes its gradient by hand; on the CPU, with the native
kernels on, the two per-feature sums come from skinjax/kernels/batch_norm.cc (see there for why
XLA's own pass is slower). Several devices: each sums its own part of the batch and a psum adds
the parts, as for the convolutions' kernel gradient (skinjax.kernels.conv.partitioned).
"""

import functools

import jax
import jax.numpy as jnp

from skinjax.kernels import build
from skinjax.kernels import conv

TARGET = 'skinjax_batch_norm_grad_sums'


@functools.cache
def register() -> None:
  jax.ffi.register_ffi_target(
      TARGET, jax.ffi.pycapsule(build.library().SkinjaxBatchNormGradSums), platform='cpu')


def _grad_sums_local(x, dy, mean, *, geometry):
  del geometry
  features = jax.ShapeDtypeStruct(mean.shape, jnp.float32)
  return tuple(jax.ffi.ffi_call(TARGET, (features, features), vmap_method='sequential')(
      x, dy, mean))


_grad_sums = conv.partitioned(_grad_sums_local, rule='b h w c, b y z d, e -> f, g',
                              batch_operands=2, sum_over_batch=True)


def grad_sums(x, dy, mean):
  """(sum of dy, sum of dy * (x - mean)) over N, H and W of float32 NHWC x and dy; mean: (C,)."""
  return _grad_sums(None, x, dy, mean)

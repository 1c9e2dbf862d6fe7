"""BatchNorm's per-feature sums in native passes: those of its statistics, sum(x - centre) and
sum((x - centre)^2), and those of its backward pass, sum(dy) and sum(dy * (x - mean)).

skinjax.models.layers' BatchNorm computes its gradient by hand; on the CPU, with the native
kernels on, these sums come from skinjax/kernels/batch_norm.cc (see there for why XLA's own
passes are slower). Several devices: each sums its own part of the batch and a psum adds
the parts, as for the convolutions' kernel gradient (skinjax.kernels.conv.partitioned).
"""

import jax
import jax.numpy as jnp

from skinjax.kernels import conv

# (XLA target name, the library's symbol) of each handler; skinjax.kernels registers them.
TARGETS = (('skinjax_batch_norm_moments', 'SkinjaxBatchNormMoments'),
           ('skinjax_batch_norm_grad_sums', 'SkinjaxBatchNormGradSums'))


def _two_sums(target, *operands):
  features = jax.ShapeDtypeStruct(operands[-1].shape, jnp.float32)
  return tuple(jax.ffi.ffi_call(target, (features, features), vmap_method='sequential')(
      *operands))


def _moments_local(x, centre, *, geometry):
  del geometry
  return _two_sums('skinjax_batch_norm_moments', x, centre)


def _grad_sums_local(x, dy, mean, *, geometry):
  del geometry
  return _two_sums('skinjax_batch_norm_grad_sums', x, dy, mean)


_moments = conv.partitioned(_moments_local, rule='b h w c, d -> e, f', batch_operands=1,
                            sum_over_batch=True)
_grad_sums = conv.partitioned(_grad_sums_local, rule='b h w c, b y z d, e -> f, g',
                              batch_operands=2, sum_over_batch=True)


def moments(x, centre):
  """(sum of x - centre, sum of (x - centre)^2) over N, H and W of float32 NHWC x; centre: (C,)."""
  return _moments(None, x, centre)


def grad_sums(x, dy, mean):
  """(sum of dy, sum of dy * (x - mean)) over N, H and W of float32 NHWC x and dy; mean: (C,)."""
  return _grad_sums(None, x, dy, mean)

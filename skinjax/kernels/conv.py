"""oneDNN's 2-D convolutions (NHWC/HWIO float32, groups 1 or depthwise) inside jitted JAX code.

`conv(x, kernel, strides, pads, groups)` computes what `lax.conv_general_dilated` computes, with
a custom gradient whose two halves (input and kernel gradients) are oneDNN primitives too. Each
of the three is an XLA FFI custom call to skinjax/kernels/onednn_conv.cc.

Several devices: XLA cannot split a custom call it knows nothing about, so it would gather the
whole batch onto every device. `custom_partitioning` tells it how: each device convolves its own
part of the batch (forward and input gradient need nothing else), and the kernel gradient, a sum
over the batch, is each device's partial sum added up with a psum over the batch's mesh axes.

Threads: oneDNN's OpenMP team runs inside the XLA thread that makes the call, one team at a time
(a lock in the library), with omp_get_max_threads() threads (every core unless OMP_NUM_THREADS
says otherwise); XLA's own pool waits for the call's result meanwhile. See docs/performance.md for
the measurements behind leaving both at the core count.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

from skinjax.kernels import build

TARGETS = {'forward': 'SkinjaxConvForward', 'input_grad': 'SkinjaxConvInputGrad',
           'kernel_grad': 'SkinjaxConvKernelGrad'}


@functools.cache
def register() -> None:
  """Builds (if needed) and loads the library, and registers its handlers with XLA once."""
  library = build.library()
  for name, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(f'skinjax_conv_{name}', jax.ffi.pycapsule(getattr(library, symbol)),
                                platform='cpu')


def output_hw(x_shape, kernel_shape, strides, pads):
  return tuple((x_shape[1 + d] + pads[d][0] + pads[d][1] - kernel_shape[d]) // strides[d] + 1
               for d in range(2))


def _call(name, first, second, shape, strides, pads, groups):
  return jax.ffi.ffi_call(f'skinjax_conv_{name}', jax.ShapeDtypeStruct(shape, jnp.float32),
                          vmap_method='sequential')(
      first, second, strides=np.asarray(strides, np.int64),
      padding=np.asarray([p for pair in pads for p in pair], np.int64), groups=np.int64(groups))


# Per-device versions of the three calls, on the local part of the batch.
def _forward_local(x, kernel, strides, pads, groups):
  shape = (x.shape[0], *output_hw(x.shape, kernel.shape, strides, pads), kernel.shape[3])
  return _call('forward', x, kernel, shape, strides, pads, groups)


def _input_grad_local(dy, kernel, x_shape, strides, pads, groups):
  return _call('input_grad', dy, kernel, (dy.shape[0], *x_shape[1:]), strides, pads, groups)


def _kernel_grad_local(x, dy, kernel_shape, strides, pads, groups):
  return _call('kernel_grad', x, dy, kernel_shape, strides, pads, groups)


def _batch_axes(sharding):
  """The mesh axes the batch (dimension 0) is split over, or None."""
  spec = getattr(sharding, 'spec', None)
  return spec[0] if spec else None


def _partitioned(local, *, reduce_batch: bool):
  """`local(a, b, *static)` as a custom_partitioning op: the batch (axis 0 of both operands) stays
  split as it comes, everything else is replicated; with `reduce_batch` the result (a kernel
  gradient) is summed over the batch's devices."""

  @functools.partial(custom_partitioning, static_argnums=(2, 3, 4, 5))
  def op(a, b, shape_arg, strides, pads, groups):
    return local(a, b, shape_arg, strides, pads, groups)

  def partition(shape_arg, strides, pads, groups, mesh, arg_shapes, result_shape):
    axes = _batch_axes(arg_shapes[0].sharding)
    batch = NamedSharding(mesh, P(axes))
    second = batch if reduce_batch else NamedSharding(mesh, P())
    result = NamedSharding(mesh, P() if reduce_batch else P(axes))

    def lower(a, b):
      out = local(a, b, shape_arg, strides, pads, groups)
      return jax.lax.psum(out, axes) if reduce_batch and axes else out

    return mesh, lower, result, (batch, second)

  def infer(shape_arg, strides, pads, groups, mesh, arg_shapes, result_shape):
    return NamedSharding(mesh, P() if reduce_batch else P(_batch_axes(arg_shapes[0].sharding)))

  # Factors: b is the batch (shared by both operands, and by the result unless summed over).
  rule = 'b h w c, b y z o -> i j k p' if reduce_batch else 'b h w c, i j k o -> b y z p'
  op.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                   reduction_factors=('b',) if reduce_batch else ())
  return op


def _with_shape_arg(local):
  return lambda a, b, _unused, strides, pads, groups: local(a, b, strides, pads, groups)


_forward = _partitioned(_with_shape_arg(_forward_local), reduce_batch=False)
_input_grad = _partitioned(_input_grad_local, reduce_batch=False)
_kernel_grad = _partitioned(_kernel_grad_local, reduce_batch=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, kernel, strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
         groups: int):
  """NHWC x, HWIO kernel (in-features x.shape[3] // groups), explicit (low, high) pads."""
  return _forward(x, kernel, None, strides, pads, groups)


def _conv_forward(x, kernel, strides, pads, groups):
  return conv(x, kernel, strides, pads, groups), (x, kernel)


def _conv_backward(strides, pads, groups, residuals, dy):
  x, kernel = residuals
  return (_input_grad(dy, kernel, x.shape, strides, pads, groups),
          _kernel_grad(x, dy, kernel.shape, strides, pads, groups))


conv.defvjp(_conv_forward, _conv_backward)

"""oneDNN's 2-D convolutions (NHWC/HWIO float32, groups 1 or depthwise) inside jitted JAX code.

`conv(strides, pads, groups, x, kernel[, bias])` computes what `lax.conv_general_dilated`
computes (plus the bias, added in the same pass), with a custom gradient whose two halves (the
input gradient, and the kernel and bias gradients) are oneDNN primitives too. Each is an XLA FFI
custom call to skinjax/kernels/onednn_conv.cc.

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

# (XLA target name, the library's symbol) of each handler; skinjax.kernels registers them.
TARGETS = (('skinjax_conv_forward', 'SkinjaxConvForward'),
           ('skinjax_conv_forward_bias', 'SkinjaxConvForwardBias'),
           ('skinjax_conv_input_grad', 'SkinjaxConvInputGrad'),
           ('skinjax_conv_kernel_grad', 'SkinjaxConvKernelGrad'),
           ('skinjax_conv_kernel_grad_bias', 'SkinjaxConvKernelGradBias'))


def output_hw(x_shape, kernel_shape, strides, pads):
  return tuple((x_shape[1 + d] + pads[d][0] + pads[d][1] - kernel_shape[d]) // strides[d] + 1
               for d in range(2))


def window_attributes(strides, pads) -> dict:
  """The FFI attributes of a sliding window's strides and (low, high) pads, as the handlers of
  onednn_conv.cc and max_pool.cc read them: (H, W) strides; top, bottom, left, right pads."""
  return dict(strides=np.asarray(strides, np.int64),
              padding=np.asarray([p for pair in pads for p in pair], np.int64))


def _call(name, operands, shapes, strides, pads, groups):
  results = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes]
  out = jax.ffi.ffi_call(f'skinjax_conv_{name}', results if len(results) > 1 else results[0],
                         vmap_method='sequential')(
      *operands, **window_attributes(strides, pads), groups=np.int64(groups))
  return tuple(out) if len(results) > 1 else out


# The calls on one device's part of the batch. `geometry` is (kernel or input shape,
# strides, pads, groups): static, hashable.
def _forward_local(x, kernel, *bias, geometry):
  _, strides, pads, groups = geometry
  shape = (x.shape[0], *output_hw(x.shape, kernel.shape, strides, pads), kernel.shape[3])
  return _call('forward_bias' if bias else 'forward', (x, kernel, *bias), [shape], strides, pads,
               groups)


def _input_grad_local(dy, kernel, *, geometry):
  x_shape, strides, pads, groups = geometry
  return _call('input_grad', (dy, kernel), [(dy.shape[0], *x_shape[1:])], strides, pads, groups)


def _kernel_grad_local(x, dy, *, geometry, with_bias: bool):
  kernel_shape, strides, pads, groups = geometry
  shapes = [kernel_shape, (kernel_shape[3],)] if with_bias else [kernel_shape]
  return _call('kernel_grad_bias' if with_bias else 'kernel_grad', (x, dy), shapes, strides, pads,
               groups)


def _batch_axes(sharding):
  """The mesh axes the batch (dimension 0) is split over, or None."""
  spec = getattr(sharding, 'spec', None)
  return spec[0] if spec else None


def partitioned(local, *, rule: str, batch_operands: int, sum_over_batch: bool):
  """`local(*operands, geometry=...)` as a custom_partitioning op. Its first `batch_operands`
  operands keep the batch (axis 0) split as it comes, the others (kernel, bias) are replicated.
  The result is split the same way, or, with `sum_over_batch` (the kernel and bias gradients),
  each device's partial sum is added up over the batch's devices."""

  @functools.partial(custom_partitioning, static_argnums=(0,))
  def op(geometry, *operands):
    return local(*operands, geometry=geometry)

  def shardings(mesh, arg_shapes):
    axes = _batch_axes(arg_shapes[0].sharding)
    args = tuple(NamedSharding(mesh, P(axes) if i < batch_operands else P())
                 for i in range(len(arg_shapes)))
    return axes, args, NamedSharding(mesh, P() if sum_over_batch else P(axes))

  def partition(geometry, mesh, arg_shapes, result_shape):
    axes, args, result = shardings(mesh, arg_shapes)

    def lower(*operands):
      out = local(*operands, geometry=geometry)
      return jax.lax.psum(out, axes) if sum_over_batch and axes else out

    results = jax.tree.map(lambda _: result, result_shape)
    return mesh, lower, results, args

  def infer(geometry, mesh, arg_shapes, result_shape):
    return jax.tree.map(lambda _: shardings(mesh, arg_shapes)[2], result_shape)

  op.def_partition(partition=partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                   reduction_factors=('b',) if sum_over_batch else ())
  return op


# Sharding rules: factor b is the batch, shared by the batch-split operands and, unless summed
# over, the result; every other dimension has a factor of its own.
_forward = partitioned(_forward_local, rule='b h w c, i j k o -> b y z p', batch_operands=1,
                       sum_over_batch=False)
_forward_bias = partitioned(_forward_local, rule='b h w c, i j k o, q -> b y z p',
                            batch_operands=1, sum_over_batch=False)
_input_grad = partitioned(_input_grad_local, rule='b y z o, i j k p -> b h w c', batch_operands=1,
                          sum_over_batch=False)
_kernel_grad = partitioned(functools.partial(_kernel_grad_local, with_bias=False),
                           rule='b h w c, b y z o -> i j k p', batch_operands=2,
                           sum_over_batch=True)
_kernel_grad_bias = partitioned(functools.partial(_kernel_grad_local, with_bias=True),
                                rule='b h w c, b y z o -> i j k p, q', batch_operands=2,
                                sum_over_batch=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def conv(strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]], groups: int,
         x, kernel, *bias):
  """NHWC x, HWIO kernel (in-features x.shape[3] // groups), explicit (low, high) pads, and an
  optional bias of one value per output feature, added in the same pass."""
  geometry = (kernel.shape, strides, pads, groups)
  return (_forward_bias if bias else _forward)(geometry, x, kernel, *bias)


def _conv_forward(strides, pads, groups, x, kernel, *bias):
  return conv(strides, pads, groups, x, kernel, *bias), (x, kernel, bias)


def _conv_backward(strides, pads, groups, residuals, dy):
  x, kernel, bias = residuals
  dx = _input_grad((x.shape, strides, pads, groups), dy, kernel)
  geometry = (kernel.shape, strides, pads, groups)
  if bias:
    return (dx, *_kernel_grad_bias(geometry, x, dy))
  return dx, _kernel_grad(geometry, x, dy)


conv.defvjp(_conv_forward, _conv_backward)

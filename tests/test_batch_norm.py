"""BatchNorm in training mode: skinjax's hand-written gradient, and its native sums
(skinjax/kernels/batch_norm.cc), against float64 NumPy (and Flax's differentiated BatchNorm in
bfloat16)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skinjax import kernels
from skinjax.models import cpu_conv, layers
from tests.helpers import eight_device_report

needs_native = pytest.mark.skipif(
    not kernels.onednn_enabled(), reason='LOUD SKIP: the native CPU kernels are unavailable here '
    '(see the warning above); .ci/run sets SKINJAX_CPU_KERNELS=onednn, which fails instead')


def _activations(shape, seed, mean=0.0, std=1.0):
  return jnp.asarray(np.random.default_rng(seed).normal(mean, std, shape), jnp.float32)


@needs_native
@pytest.mark.parametrize('shape', [(2, 5, 7, 3), (3, 17, 19, 40), (16, 12, 12, 96)])
def test_native_sums_match_float64(shape):
  """Rows (N*H*W: 70, 969, 2304) that are not whole chunks of 256, features that are not whole
  vectors, and a mean 40 std from zero: the backward sums and the statistics agree with float64
  to float32 rounding."""
  x, dy = _activations(shape, 0, mean=20.0, std=0.5), _activations(shape, 1)
  mean = x.mean((0, 1, 2))
  assert 'skinjax_batch_norm' in str(jax.make_jaxpr(cpu_conv.batch_norm_grad_sums)(x, dy, mean))
  sum_dy, sum_dy_centred = jax.jit(cpu_conv.batch_norm_grad_sums)(x, dy, mean)
  x64, dy64, mean64 = (np.asarray(a, np.float64) for a in (x, dy, mean))
  np.testing.assert_allclose(sum_dy, dy64.sum((0, 1, 2)), rtol=0,
                             atol=1e-6 * np.abs(dy64).sum((0, 1, 2)).max())
  centred = dy64 * (x64 - mean64)
  np.testing.assert_allclose(sum_dy_centred, centred.sum((0, 1, 2)), rtol=0,
                             atol=1e-6 * np.abs(centred).sum((0, 1, 2)).max())
  # The pure-JAX form, the fallback, computes the same sums.
  with cpu_conv.portable_ops():
    reference = jax.jit(cpu_conv.batch_norm_grad_sums)(x, dy, mean)
  for got, want in zip((sum_dy, sum_dy_centred), reference):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  # The statistics: two native passes, the mean and then the centred squares.
  assert 'skinjax_batch_norm' in str(jax.make_jaxpr(cpu_conv.batch_norm_statistics)(x))
  got_mean, got_var = jax.jit(cpu_conv.batch_norm_statistics)(x)
  want_mean = x64.mean((0, 1, 2))
  want_var = np.square(x64 - want_mean).mean((0, 1, 2))
  np.testing.assert_allclose(got_mean, want_mean, rtol=1e-6)
  np.testing.assert_allclose(got_var, want_var, rtol=1e-5)


@needs_native
def test_native_sums_are_bitwise_reproducible():
  x, dy = _activations((16, 28, 28, 64), 2), _activations((16, 28, 28, 64), 3)
  mean = x.mean((0, 1, 2))
  sums = jax.jit(lambda x, dy, mean: (cpu_conv.batch_norm_grad_sums(x, dy, mean),
                                      cpu_conv.batch_norm_statistics(x)))
  first = jax.device_get(sums(x, dy, mean))
  for _ in range(3):
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(jax.device_get(sums(x, dy, mean)))):
      np.testing.assert_array_equal(a, b)


def _train_batch_norm(call, x, scale, bias, weights):
  """Loss, output, updated moving statistics and the gradients of x, scale and bias."""
  norm = layers.batch_norm(x.shape[-1], epsilon=1.001e-5, dtype=x.dtype, rngs=nnx.Rngs(0))
  norm.train()

  def loss(x, scale, bias):
    traced = nnx.clone(norm)  # a module of this trace, whose statistics the call may update
    traced.scale[...], traced.bias[...] = scale, bias
    y = call(traced, x)
    return (jnp.sum(jnp.tanh(y.astype(jnp.float32)) * weights),
            (y, traced.mean[...], traced.var[...]))

  (value, aux), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(x, scale, bias)
  return value, aux, grads


def _float64_reference(x, scale, bias, weights, epsilon=1.001e-5, momentum=0.99):
  """What _train_batch_norm returns, in float64 NumPy: Keras' training-mode BatchNorm (two-pass
  variance) and its gradient written out."""
  x, scale, bias, weights = (np.asarray(a, np.float64) for a in (x, scale, bias, weights))
  count = x.size // x.shape[-1]
  mean = x.mean((0, 1, 2))
  var = np.square(x - mean).mean((0, 1, 2))
  inv_std = 1 / np.sqrt(var + epsilon)
  y = (x - mean) * inv_std * scale + bias
  dy = weights * (1 - np.tanh(y) ** 2)
  dbias, dy_centred = dy.sum((0, 1, 2)), (dy * (x - mean)).sum((0, 1, 2))
  dx = scale * inv_std * (dy - dbias / count - (x - mean) * inv_std ** 2 * dy_centred / count)
  # Flax's moving statistics start at mean 0, variance 1.
  return (np.sum(np.tanh(y) * weights), (y, (1 - momentum) * mean, momentum + (1 - momentum) * var),
          (dx, dy_centred * inv_std, dbias))


@pytest.mark.parametrize('native', [True, False])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_training_batch_norm_matches_the_reference(native, dtype):
  """skinjax's BatchNorm (its hand-written gradient; the native sums or their jnp form), on
  activations whose mean is 40 std from zero: in float32 against float64 NumPy, to float32
  rounding; in bfloat16 against Flax's nnx.BatchNorm differentiated by JAX (Flax normalises in
  bfloat16, skinjax in float32, as Keras)."""
  if native and not kernels.onednn_enabled():
    pytest.skip('LOUD SKIP: the native CPU kernels are unavailable here')
  shape = (4, 9, 9, 24)
  x = _activations(shape, 4, mean=10.0, std=0.25).astype(dtype)
  scale = jnp.asarray(np.random.default_rng(5).uniform(0.5, 2.0, shape[-1]), jnp.float32)
  bias = _activations(shape[-1:], 6)
  weights = _activations(shape, 7)
  if dtype == jnp.float32:
    want, tolerance = _float64_reference(x, scale, bias, weights), 3e-5
  else:
    flax_call = lambda norm, x: nnx.BatchNorm.__call__(norm, x, use_running_average=False)
    want, tolerance = _train_batch_norm(flax_call, x, scale, bias, weights), 2e-2
  if native:
    assert 'skinjax_batch_norm' in str(jax.make_jaxpr(
        lambda x: _train_batch_norm(lambda norm, x: norm(x), x, scale, bias, weights))(x))
    got = _train_batch_norm(lambda norm, x: norm(x), x, scale, bias, weights)
  else:
    with cpu_conv.portable_ops():
      got = _train_batch_norm(lambda norm, x: norm(x), x, scale, bias, weights)
  assert got[1][0].dtype == dtype
  for name, a, b in zip(('loss', 'y', 'moving mean', 'moving variance', 'dx', 'dscale', 'dbias'),
                        jax.tree.leaves(got), jax.tree.leaves(want)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, name
    np.testing.assert_allclose(a, b, rtol=0, atol=tolerance * max(np.abs(b).max(), 1e-3),
                               err_msg=name)


_PER_DEVICE_SCRIPT = r"""
import json
import jax.numpy as jnp, numpy as np
from skinjax.models import cpu_conv
from tests.helpers import one_and_eight_devices
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((16, 6, 6, 8)), jnp.float32)
dy = jnp.asarray(rng.standard_normal((16, 6, 6, 8)), jnp.float32)
sums = lambda x, dy, mean: (cpu_conv.batch_norm_grad_sums(x, dy, mean),
                            cpu_conv.batch_norm_statistics(x))
print(json.dumps(one_and_eight_devices(sums, [x, dy], [x.mean((0, 1, 2))],
                                       'skinjax_batch_norm')))
"""


@needs_native
def test_each_device_sums_its_own_part_of_the_batch():
  """With the batch split over 8 devices, each call sees 16 / 8 = 2 images, nothing is gathered,
  and the psums of the parts give the one-device sums and statistics."""
  report = eight_device_report(_PER_DEVICE_SCRIPT)
  # The backward sums, and the statistics' two passes.
  assert report['calls'] == 3 and report['batches'] == [2] and not report['all_gather']
  assert report['difference'] < 1e-4

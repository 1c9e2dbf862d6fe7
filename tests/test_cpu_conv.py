"""The CPU fast paths compute what lax.conv_general_dilated computes, values and gradients.

The convolution tests run on both CPU paths: oneDNN (skinjax.kernels, also tested on its own in
test_onednn_conv.py) and the pure-JAX rewrites that are its fallback ($SKINJAX_CPU_KERNELS=xla).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from skinjax import kernels
from skinjax.models import cpu_conv
from tests.helpers import eight_device_report

NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')


def _random(shape, seed, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def _use_kernels(monkeypatch, choice):
  if choice == 'onednn' and not kernels.onednn_enabled():
    pytest.skip('LOUD SKIP: the oneDNN kernels are unavailable here')
  monkeypatch.setenv(kernels.ENV_VAR, choice)
  kernels.onednn_enabled.cache_clear()


@pytest.fixture(params=['onednn', 'xla'])
def cpu_kernels(request, monkeypatch):
  _use_kernels(monkeypatch, request.param)
  yield request.param
  kernels.onednn_enabled.cache_clear()


@pytest.fixture
def xla_kernels(monkeypatch):
  _use_kernels(monkeypatch, 'xla')
  yield
  kernels.onednn_enabled.cache_clear()


def _both(lhs, rhs, strides, padding, groups):
  def run(conv):
    def loss(x, w):
      y = conv(x, w, strides, padding, dimension_numbers=NHWC_HWIO, feature_group_count=groups)
      return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
    # Under jit, as in the train step (and one compilation instead of one per operation).
    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(lhs, rhs)
    return y, grads
  return run(cpu_conv.conv_general_dilated), run(lax.conv_general_dilated)


@pytest.mark.parametrize('strides', [(1, 1), (2, 2)])
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((1, 0), (0, 1))])
def test_pointwise_conv_matches_lax(strides, padding, cpu_kernels):
  lhs, rhs = _random((2, 9, 8, 5), 0), _random((1, 1, 5, 7), 1)
  (y, grads), (want_y, want_grads) = _both(lhs, rhs, strides, padding, 1)
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel', [3, 5])
@pytest.mark.parametrize('strides', [(1, 1), (2, 2)])
@pytest.mark.parametrize('padding', ['SAME', 'VALID', ((0, 1), (0, 1))])
def test_depthwise_conv_matches_lax(kernel, strides, padding, cpu_kernels):
  lhs, rhs = _random((2, 11, 10, 6), 2), _random((kernel, kernel, 1, 6), 3)
  (y, grads), (want_y, want_grads) = _both(lhs, rhs, strides, padding, 6)
  assert y.shape == want_y.shape
  np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
  for grad, want in zip(grads, want_grads):
    np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-4)


def test_bfloat16_depthwise_accumulates_like_the_convolution():
  lhs, rhs = _random((1, 16, 16, 8), 4, jnp.bfloat16), _random((5, 5, 1, 8), 5, jnp.bfloat16)
  y = cpu_conv.conv_general_dilated(lhs, rhs, (1, 1), 'SAME', dimension_numbers=NHWC_HWIO,
                                    feature_group_count=8)
  exact = lax.conv_general_dilated(lhs.astype(jnp.float32), rhs.astype(jnp.float32), (1, 1),
                                   'SAME', dimension_numbers=NHWC_HWIO, feature_group_count=8)
  assert y.dtype == jnp.bfloat16
  # One bfloat16 rounding of the float32 sum, not 25 of them.
  np.testing.assert_allclose(y.astype(jnp.float32), exact, rtol=2 ** -8, atol=1e-2)


def test_other_convolutions_are_left_to_lax(xla_kernels):
  lhs, rhs = _random((1, 8, 8, 4), 6), _random((3, 3, 2, 6), 7)  # grouped, not depthwise
  jaxpr = jax.make_jaxpr(lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC_HWIO, feature_group_count=2))(lhs, rhs)
  assert 'conv_general_dilated' in str(jaxpr)
  pointwise = jax.make_jaxpr(lambda x, w: cpu_conv.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC_HWIO))(lhs, _random((1, 1, 4, 6), 8))
  assert 'conv_general_dilated' not in str(pointwise) and 'dot_general' in str(pointwise)


def test_onednn_takes_float32_dense_and_depthwise_only(cpu_kernels):
  lhs = _random((1, 8, 8, 4), 6)
  def lowered(rhs, groups, dtype=jnp.float32):
    return str(jax.make_jaxpr(lambda x, w: cpu_conv.conv_general_dilated(
        x, w, (1, 1), 'SAME', dimension_numbers=NHWC_HWIO, feature_group_count=groups))(
            lhs.astype(dtype), rhs.astype(dtype)))
  native = 'skinjax_conv_forward'
  assert (native in lowered(_random((3, 3, 4, 6), 7), 1)) == (cpu_kernels == 'onednn')
  assert (native in lowered(_random((3, 3, 1, 4), 7), 4)) == (cpu_kernels == 'onednn')
  assert native not in lowered(_random((3, 3, 2, 6), 7), 2)  # grouped, not depthwise
  assert native not in lowered(_random((3, 3, 4, 6), 7), 1, jnp.bfloat16)


def _pools_natively(pool, x) -> bool:
  return 'skinjax_max_pool' in str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(pool(x))))(x))


@pytest.mark.parametrize('window, strides, padding', [
    ((2, 2), (2, 2), 'VALID'),  # small_cnn, VGG16
    ((3, 3), (2, 2), 'VALID'),  # ResNet50, after its ZeroPadding
    ((3, 3), (2, 2), 'SAME'),  # Xception
    ((3, 3), (1, 1), 'SAME'),
    ((3, 3), (2, 2), [(1, 1), (1, 1)]),  # explicit pads, as a list
    ((2, 2), (2, 2), [(2, 1), (0, 1)]),  # a first row of windows wholly in the padding
])
def test_max_pool_matches_flax_values_and_gradients(window, strides, padding, cpu_kernels):
  # Odd sizes (SAME pads, VALID drops a border) and features that are not whole vectors.
  x = _random((2, 11, 10, 19), 6)
  cotangent = _random(nnx.max_pool(x, window, strides=strides, padding=padding).shape, 7)

  def run(pool):
    def forward_and_back(x, cotangent):
      y, backward = jax.vjp(pool, x)
      return y, backward(cotangent)[0]
    return jax.jit(forward_and_back)(x, cotangent)

  ours = lambda x: cpu_conv.max_pool(x, window, strides, padding)  # noqa: E731
  assert _pools_natively(ours, x) == (cpu_kernels == 'onednn')
  y, grad = run(ours)
  want_y, want_grad = run(lambda x: nnx.max_pool(x, window, strides=strides, padding=padding))
  np.testing.assert_array_equal(y, want_y)  # a maximum is exact (-inf where no pixel is inside)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('window, strides, padding', [((2, 2), (2, 2), 'VALID'),
                                                      ((3, 3), (2, 2), 'SAME')])
def test_max_pool_gives_a_tied_window_gradient_to_one_pixel_as_flax(window, strides, padding,
                                                                     cpu_kernels):
  """After a ReLU whole windows tie; the gradient must go to one pixel, not split or vanish."""
  x = jnp.asarray(np.random.default_rng(8).integers(0, 3, (2, 8, 8, 3)), jnp.float32)
  cotangent = _random(nnx.max_pool(x, window, strides=strides, padding=padding).shape, 9)

  def grad(pool):
    return jax.jit(lambda x, cotangent: jax.vjp(pool, x)[1](cotangent)[0])(x, cotangent)

  ours = grad(lambda x: cpu_conv.max_pool(x, window, strides, padding))
  flax_grad = grad(lambda x: nnx.max_pool(x, window, strides=strides, padding=padding))
  np.testing.assert_allclose(jnp.sum(ours), jnp.sum(cotangent), rtol=1e-5)  # nothing lost
  np.testing.assert_allclose(ours, flax_grad, rtol=1e-6, atol=1e-6)


def test_max_pool_keeps_a_nan_as_flax(cpu_kernels):
  """A NaN in a window makes its maximum NaN, so that a diverging run shows in its loss."""
  x = _random((1, 4, 4, 17), 10).at[0, 1, 2, 5].set(jnp.nan).at[0, 3, 3, 16].set(jnp.nan)
  ours = jax.jit(lambda x: cpu_conv.max_pool(x, (2, 2), (2, 2)))(x)
  np.testing.assert_array_equal(ours, nnx.max_pool(x, (2, 2), strides=(2, 2)))
  assert int(jnp.isnan(ours).sum()) == 2


_PER_DEVICE_POOL_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from skinjax.models import cpu_conv
from tests.helpers import one_and_eight_devices
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((16, 12, 12, 8)), jnp.float32)
cotangent = jnp.asarray(rng.standard_normal((16, 6, 6, 8)), jnp.float32)
def pool_and_back(x, cotangent):
  y, back = jax.vjp(lambda x: cpu_conv.max_pool(x, (3, 3), (2, 2), 'SAME'), x)
  return y, back(cotangent)[0]
print(json.dumps(one_and_eight_devices(pool_and_back, [x, cotangent], [], 'skinjax_max_pool')))
"""


def test_each_device_pools_its_own_part_of_the_batch(monkeypatch):
  """With the batch split over 8 devices, the forward and backward calls each see 16 / 8 = 2
  images, nothing is gathered, and the values and gradients are the one-device ones."""
  _use_kernels(monkeypatch, 'onednn')
  report = eight_device_report(_PER_DEVICE_POOL_SCRIPT)
  assert report['calls'] == 2 and report['batches'] == [2] and not report['all_gather']
  assert report['difference'] == 0  # no sum crosses devices

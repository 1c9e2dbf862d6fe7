"""oneDNN's convolutions (skinjax.kernels) against lax.conv_general_dilated, the reference.

The cases are every kind of convolution the registered architectures contain (kernel size,
stride, padding, grouping), listed here and checked against the models themselves, at a small
input of odd and even size so that TF's "SAME" gives both its symmetric and its asymmetric (0, 1)
pads.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from skinjax import kernels
from skinjax.models import cpu_conv, registry
from tests.helpers import eight_device_report

NHWC_HWIO = ('NHWC', 'HWIO', 'NHWC')

pytestmark = pytest.mark.skipif(
    not kernels.onednn_enabled(), reason='LOUD SKIP: the oneDNN kernels are unavailable here '
    '(see the warning above); .ci/run sets SKINJAX_CPU_KERNELS=onednn, which fails instead')


# (kernel size, stride, padding, grouping) of every convolution in the registered architectures.
# Written out rather than read from the models at collection, which would trace every
# architecture (~7 s) in each test process; the test below keeps it equal to the models'.
MODEL_CONV_KINDS = (
    ((1, 1), 1, 'SAME', 'dense'), ((1, 1), 2, 'SAME', 'dense'), ((3, 3), 1, 'SAME', 'dense'),
    ((3, 3), 1, 'SAME', 'depthwise'), ((3, 3), 1, 'VALID', 'dense'), ((3, 3), 2, 'SAME', 'dense'),
    ((3, 3), 2, 'SAME', 'depthwise'), ((3, 3), 2, 'VALID', 'dense'),
    ((3, 3), 2, 'VALID', 'depthwise'), ((5, 5), 1, 'SAME', 'depthwise'),
    ((5, 5), 2, 'SAME', 'depthwise'), ((5, 5), 2, 'VALID', 'depthwise'),
    ((7, 7), 2, 'VALID', 'dense'))


def test_the_models_use_the_kinds_the_issue_lists(fast_tracing):
  """What the kernels must cover, as the models define it: if an architecture adds another kind
  of convolution, this fails until MODEL_CONV_KINDS, and so the parametrised test below, has it."""
  assert registry.all_convolution_kinds() == MODEL_CONV_KINDS
  kinds = MODEL_CONV_KINDS
  assert {kernel for kernel, *_ in kinds} == {(1, 1), (3, 3), (5, 5), (7, 7)}
  assert {stride for _, stride, *_ in kinds} == {1, 2}
  assert {padding for *_, padding, _ in kinds} == {'SAME', 'VALID'}
  assert {grouping for *_, grouping in kinds} == {'dense', 'depthwise'}


def _random(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _value_and_grads(conv, x, kernel, strides, padding, groups, dy):
  def apply(x, kernel):
    return conv(x, kernel, strides, padding, dimension_numbers=NHWC_HWIO,
                feature_group_count=groups)
  y, vjp = jax.vjp(apply, x, kernel)
  return (y, *vjp(dy))


def _cases():
  """Each kind at an odd and an even size, at 24 channels (not a multiple of oneDNN's 16-channel
  blocks); depthwise ones above 3x3 also at 32, a multiple of 16, which the library's own
  depthwise kernel gradient takes (3x3 ones go to oneDNN at any channel count)."""
  def channel_counts(kind):
    (kh, kw), *_, grouping = kind
    return (24, 32) if grouping == 'depthwise' and kh * kw > 9 else (24,)
  if not kernels.onednn_enabled():
    return []
  return [(kind, size, channels) for kind in MODEL_CONV_KINDS for size in (11, 12)
          for channels in channel_counts(kind)]


@pytest.mark.parametrize('kind, size, channels', _cases(), ids=repr)
def test_kernels_match_lax_to_float32_rounding(kind, size, channels):
  """Forward, input and kernel gradients within 1e-5 of the magnitude of the sums they compute
  (the same sums of |terms|), the rounding that summing in another order gives."""
  (kh, kw), stride, padding, grouping = kind
  out_features, groups = (channels, channels) if grouping == 'depthwise' else (16, 1)
  x = _random((3, size, size + 2, channels), 0)
  kernel = _random((kh, kw, channels // groups, out_features), 1)
  out_shape = jax.eval_shape(lambda: lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=NHWC_HWIO,
      feature_group_count=groups)).shape
  dy = _random(out_shape, 2)
  args = ((stride, stride), padding, groups)

  @jax.jit  # one compilation for the three: each case's cost is compiling, not convolving
  def ours_reference_and_magnitude(x, kernel, dy):
    return (_value_and_grads(cpu_conv.conv_general_dilated, x, kernel, *args, dy),
            _value_and_grads(lax.conv_general_dilated, x, kernel, *args, dy),
            _value_and_grads(lax.conv_general_dilated, jnp.abs(x), jnp.abs(kernel), *args,
                             jnp.abs(dy)))

  ours, reference, magnitude = ours_reference_and_magnitude(x, kernel, dy)
  jaxpr = str(jax.make_jaxpr(lambda x, k: cpu_conv.conv_general_dilated(
      x, k, *args[:2], dimension_numbers=NHWC_HWIO, feature_group_count=groups))(x, kernel))
  assert 'skinjax_conv_forward' in jaxpr
  for name, got, want, scale in zip(('forward', 'input grad', 'kernel grad'), ours, reference,
                                    magnitude):
    error = np.max(np.abs(np.asarray(got) - np.asarray(want)) / (np.asarray(scale) + 1e-30))
    assert error < 1e-5, f'{name}: {error:.2e} of the magnitude'


def test_kernel_gradient_is_bitwise_reproducible():
  """Exact resume needs two runs of one step to agree to the bit: oneDNN's reductions over the
  batch and the image (split among threads) must not depend on timing."""
  x, dy = _random((16, 40, 40, 32), 3), _random((16, 20, 20, 48), 4)  # 5x5 depthwise: our loop
  kernel = _random((3, 3, 32, 48), 5)
  depthwise_kernel, depthwise_dy = _random((5, 5, 1, 32), 6), _random((16, 20, 20, 32), 7)

  @jax.jit
  def grads(x, kernel, dy, depthwise_kernel, depthwise_dy):
    dense = _value_and_grads(cpu_conv.conv_general_dilated, x, kernel, (2, 2), 'SAME', 1, dy)
    depthwise = _value_and_grads(cpu_conv.conv_general_dilated, x, depthwise_kernel, (2, 2),
                                 'SAME', 32, depthwise_dy)
    return dense, depthwise

  first = jax.device_get(grads(x, kernel, dy, depthwise_kernel, depthwise_dy))
  for _ in range(3):
    again = jax.device_get(grads(x, kernel, dy, depthwise_kernel, depthwise_dy))
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('kernel_size, strides, padding', [
    (1, 1, 'SAME'), (3, 2, 'SAME'), (7, 2, 'VALID'), (3, 1, ((1, 0), (2, 1)))])
def test_conv_with_bias_matches_nnx_conv(kernel_size, strides, padding):
  """cpu_conv.Conv hands its bias to oneDNN (added in the convolution's pass, its gradient from
  the kernel gradient's): values and all three gradients equal nnx.Conv's on lax."""
  # Parameters from numpy, the kernel at nnx's default scale (1 / sqrt(fan in)): jax.random's
  # initialisers take XLA:CPU up to 30 s to compile for some 4-D shapes (3x3x8x12 among them).
  def kernel_init(_, shape, __):
    return _random(shape, 7) / np.sqrt(np.prod(shape[:-1]))

  options = dict(in_features=8, out_features=12, kernel_size=(kernel_size, kernel_size),
                 strides=strides, padding=padding, kernel_init=kernel_init,
                 bias_init=lambda _, shape, __: _random(shape, 8))
  ours, reference = cpu_conv.Conv(**options, rngs=nnx.Rngs(0)), nnx.Conv(**options, rngs=nnx.Rngs(0))
  x = _random((3, 13, 12, 8), 9)

  def value_and_grads(conv):
    def loss(conv, x):
      y = conv(x)
      return jnp.sum(jnp.sin(y)), y
    (_, y), (grads, dx) = nnx.jit(nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True))(conv, x)
    return y, dx, grads.kernel[...], grads.bias[...]

  assert 'skinjax_conv_forward_bias' in str(jax.make_jaxpr(lambda x: ours(x))(x))
  for got, want in zip(value_and_grads(ours), value_and_grads(reference)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


_PER_DEVICE_SCRIPT = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from skinjax.models import cpu_conv
from tests.helpers import one_and_eight_devices
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((16, 12, 12, 8)), jnp.float32)
kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)
def loss(x, kernel):
  y = cpu_conv.conv_general_dilated(x, kernel, (2, 2), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.sin(y))
print(json.dumps(one_and_eight_devices(jax.value_and_grad(loss, argnums=(0, 1)), [x], [kernel],
                                       'skinjax_conv')))
"""


def test_each_device_convolves_its_own_part_of_the_batch():
  """With the batch split over 8 devices, every custom call sees 16 / 8 = 2 images, nothing is
  gathered, and the values and gradients are the one-device ones."""
  report = eight_device_report(_PER_DEVICE_SCRIPT)
  assert report['calls'] == 3 and report['batches'] == [2] and not report['all_gather']
  assert report['difference'] < 1e-4

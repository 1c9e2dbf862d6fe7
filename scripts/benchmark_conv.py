r"""Per kind of convolution: oneDNN's kernels against lax.conv_general_dilated, accuracy and speed.

  python scripts/benchmark_conv.py [--batch_size=16] [--size=32] [--channels=64] [--repeats=5] [--json]

For every kind of convolution in the registered architectures (kernel size, stride, padding,
dense or depthwise: what tests/test_onednn_conv.py checks), it prints the largest difference of
skinjax's CPU convolution from lax.conv_general_dilated in the forward pass, the input gradient
and the kernel gradient, each relative to the magnitude of the sums computed (the same sums of
|terms|; float32 rounding is about 1e-7 of it), and the forward+backward time of oneDNN's path
against XLA's pure-JAX path ($SKINJAX_CPU_KERNELS=xla), timed under jit in alternating rounds.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from skinjax import kernels
from skinjax.models import cpu_conv
from skinjax.models import registry
from skinjax.runtime import cli_flags

_BATCH = flags.DEFINE_integer('batch_size', 16, 'Batch.', lower_bound=1)
_SIZE = flags.DEFINE_integer('size', 32, 'Square input side.', lower_bound=8)
_CHANNELS = flags.DEFINE_integer('channels', 64, 'Input channels (and depthwise outputs).',
                                 lower_bound=1)
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds.', lower_bound=1)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object per kind.')

DIMENSIONS = ('NHWC', 'HWIO', 'NHWC')


def _value_and_grads(conv, x, kernel, strides, padding, groups, dy):
  y, vjp = jax.vjp(lambda x, k: conv(x, k, strides, padding, dimension_numbers=DIMENSIONS,
                                     feature_group_count=groups), x, kernel)
  return (y, *vjp(dy))


def _timed(function, *args) -> float:
  jax.block_until_ready(function(*args))
  start = time.perf_counter()
  jax.block_until_ready(function(*args))
  return time.perf_counter() - start


def measure(kind, rng) -> dict:
  (kh, kw), stride, padding, grouping = kind
  channels = _CHANNELS.value
  out_features, groups = (channels, channels) if grouping == 'depthwise' else (channels, 1)
  x = jnp.asarray(rng.standard_normal((_BATCH.value, _SIZE.value, _SIZE.value, channels)),
                  jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((kh, kw, channels // groups, out_features)),
                       jnp.float32)
  args = ((stride, stride), padding, groups)
  out_shape = jax.eval_shape(lambda: lax.conv_general_dilated(
      x, kernel, *args[:2], dimension_numbers=DIMENSIONS, feature_group_count=groups)).shape
  dy = jnp.asarray(rng.standard_normal(out_shape), jnp.float32)
  def step(x, k, dy):
    return _value_and_grads(cpu_conv.conv_general_dilated, x, k, *args, dy)

  # Each compiled now, from its own trace: jax.jit caches traces per function, so two jits of one
  # function would share the first one's choice of path.
  onednn = jax.jit(step).lower(x, kernel, dy).compile()
  with kernels.forced('xla'):
    xla = jax.jit(lambda *a: step(*a)).lower(x, kernel, dy).compile()
  ours = onednn(x, kernel, dy)
  reference = _value_and_grads(lax.conv_general_dilated, x, kernel, *args, dy)
  magnitude = _value_and_grads(lax.conv_general_dilated, jnp.abs(x), jnp.abs(kernel), *args,
                               jnp.abs(dy))
  errors = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)) / (np.asarray(m) + 1e-30)))
            for a, b, m in zip(ours, reference, magnitude)]
  times = {'onednn': [], 'xla': []}
  for _ in range(_REPEATS.value):
    times['onednn'].append(_timed(onednn, x, kernel, dy))
    times['xla'].append(_timed(xla, x, kernel, dy))
  onednn_s, xla_s = (float(np.median(t)) for t in (times['onednn'], times['xla']))
  return {'kernel': f'{kh}x{kw}', 'stride': stride, 'padding': padding, 'grouping': grouping,
          'max_error_forward': errors[0], 'max_error_input_grad': errors[1],
          'max_error_kernel_grad': errors[2], 'onednn_ms': 1e3 * onednn_s, 'xla_ms': 1e3 * xla_s,
          'speedup': xla_s / onednn_s}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if jax.default_backend() != 'cpu' or not kernels.onednn_enabled():
    raise app.UsageError('the oneDNN kernels are not in use here (CPU only; see the warning above '
                         f'or set {kernels.ENV_VAR}=onednn to see why).')
  rng = np.random.default_rng(0)
  rows = [measure(kind, rng) for kind in registry.all_convolution_kinds()]
  if _JSON.value:
    for row in rows:
      print(json.dumps(row))
    return
  print(f'batch {_BATCH.value}, {_SIZE.value}x{_SIZE.value}, {_CHANNELS.value} channels; '
        'errors relative to the magnitude of the sums; forward+backward times')
  print('kind                         forward  input grad  kernel grad  oneDNN ms  XLA ms  speedup')
  for r in rows:
    name = f"{r['kernel']} s{r['stride']} {r['padding']} {r['grouping']}"
    print(f"{name:28s} {r['max_error_forward']:.1e}  {r['max_error_input_grad']:.1e}     "
          f"{r['max_error_kernel_grad']:.1e}      {r['onednn_ms']:7.2f}  {r['xla_ms']:6.2f}  "
          f"{r['speedup']:5.1f}x")


if __name__ == '__main__':
  cli_flags.run(main)

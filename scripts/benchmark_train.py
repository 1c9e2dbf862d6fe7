r"""Measures the real skinjax train step (classifier head, optimiser, donation) and, optionally, Keras.

  python scripts/benchmark_train.py --arch=resnet50 --image_size=224 --batch_size=16 \
      [--dtype=float32|bfloat16] [--steps=N] [--rounds=R] \
      [--compare=xla,keras[,keras_torch][,torch_resnet50]|torch_reference] \
      [--torch_python=PYTHON] [--nodonate] [--json]

It reports steady-state images/s (after a warm-up, timed with block_until_ready), trace and
compile time (the persistent compilation cache is on, as in training; set
SKINJAX_COMPILATION_CACHE=off for a cold compile), peak memory, FLOPs per step from XLA's cost
analysis of the step compiled on the pure-JAX path (it counts nothing inside oneDNN's calls), and
MFU against a float32 peak measured in the same run: that of a large 1x1 convolution on oneDNN
(a GEMM) where the native CPU kernels are on, else that of XLA's matmul; both are reported. The
batch is split
over all devices as in training (virtual CPU devices:
XLA_FLAGS=--xla_force_host_platform_device_count=8).

--compare=xla times skinjax's own step traced with SKINJAX_CPU_KERNELS=xla (XLA's convolutions,
without the oneDNN kernels) in this process: the before and after of those kernels, side by side.
--compare=keras builds the same architecture with the same head, loss (sparse cross-entropy) and
Adam in Keras 3 on JAX (jit_compile=True, train_on_batch) in this process; keras_torch does the
same in Keras 3 on PyTorch, in a worker process (scripts/keras_step.py) run by --torch_python, an
interpreter with torch and keras installed. Keras' eager step on PyTorch is not how PyTorch users
train, so for resnet50 torch_resnet50 also times Keras' ResNet50 written in plain torch.nn with
PyTorch's own train step, channels_last, Adam (scripts/torch_resnet50_step.py), in a worker of
its own. For the EfficientNet-Lite architectures, which Keras lacks, torch_reference times the
reference PyTorch model that skinjax ports (efficientnet-lite-pytorch) with that same step
(scripts/torch_lite_step.py). Several comparisons, workers included, can run at once (e.g.
--compare=keras_torch,torch_resnet50); timed rounds of all of them alternate, so that machine
noise hits each alike; each ratio is skinjax images/s over theirs.
"""

import json
import os
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault('KERAS_BACKEND', 'jax')  # Must precede any keras import.

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from skinjax import kernels
from skinjax.data.constants import NUM_CLASSES
from skinjax.models import cpu_conv
from skinjax.models import preprocessing
from skinjax.models import registry
from skinjax.runtime import cli_flags
from skinjax.runtime import compilation_cache
from skinjax.runtime import sharding
from skinjax.runtime import steps

from keras_step import KERAS_APPLICATIONS, KerasStep, synthetic_images_and_labels  # noqa: E402

_ARCH = flags.DEFINE_enum('arch', 'resnet50', registry.ARCHITECTURES, 'Architecture.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input side.', lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Global batch size.', lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (alternating with Keras).',
                               lower_bound=1)
_COMPARE = flags.DEFINE_list(
    'compare', [], 'Also time Keras 3 on JAX (keras) and/or on PyTorch (keras_torch), and for '
    'resnet50 a plain PyTorch ResNet50 (torch_resnet50), e.g. '
    '--compare=keras,keras_torch,torch_resnet50; for efficientnet_lite*, the reference PyTorch '
    'model (torch_reference); xla: skinjax itself without its native CPU kernels.')
_TORCH_PYTHON = flags.DEFINE_string(
    'torch_python', sys.executable, 'Interpreter with torch and keras for --compare=keras_torch, '
    'with torch and numpy for --compare=torch_resnet50, or with torch and '
    'efficientnet-lite-pytorch for --compare=torch_reference.')
_DONATE = flags.DEFINE_bool('donate', True, 'Donate the train state to the step, as the trainer '
                            'does (--nodonate: measure what donation saves).')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')

KERAS_STEP_SCRIPT = pathlib.Path(__file__).with_name('keras_step.py')
TORCH_LITE_STEP_SCRIPT = pathlib.Path(__file__).with_name('torch_lite_step.py')
TORCH_RESNET50_STEP_SCRIPT = pathlib.Path(__file__).with_name('torch_resnet50_step.py')
LITE_PREFIX = 'efficientnet_lite'
# The comparisons that run in a worker process.
WORKERS = ('keras_torch', 'torch_resnet50', 'torch_reference')
LABELS = {'xla': "skinjax on XLA's convolutions", 'keras': 'Keras 3 on JAX', 'keras_torch': 'Keras 3 on PyTorch',
          'torch_resnet50': 'plain PyTorch ResNet50',
          'torch_reference': 'the reference PyTorch model'}


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of float32 matmuls on all devices at once: the 'hardware limit' MFU is taken against.

  Each device multiplies its own matrix, so the figure is the aggregate peak of real devices and,
  for virtual CPU devices, that of the cores they share.
  """
  mesh = sharding.data_mesh()
  a = jax.device_put(jnp.ones((mesh.devices.size, size, size), jnp.float32),
                     sharding.batch_sharding(mesh))
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = matmul(a)
  out.block_until_ready()
  return 2 * size ** 3 * mesh.devices.size * repeats / (time.perf_counter() - start)


def conv_peak_flops(channels: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of a large float32 1x1 convolution (a GEMM) through skinjax's CPU convolution: oneDNN's
  peak where its kernels are on, the peak of what the step's convolutions run on."""
  x = jnp.ones((8, 32, 32, channels), jnp.float32)
  kernel = jnp.ones((1, 1, channels, channels), jnp.float32)
  conv = jax.jit(lambda x, k: cpu_conv.conv_general_dilated(
      x, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  conv(x, kernel).block_until_ready()
  start = time.perf_counter()
  for _ in range(repeats):
    out = conv(x, kernel)
  out.block_until_ready()
  return 2 * x.size * channels * repeats / (time.perf_counter() - start)


def synthetic_batch(batch_size: int, image_size: int) -> dict:
  images, labels = synthetic_images_and_labels(batch_size, image_size, NUM_CLASSES)
  return {'image': jnp.asarray(images), 'label': jnp.asarray(labels),
          'mask': jnp.ones(batch_size, jnp.float32)}


class SkinjaxStep:
  """The trainer's own jitted step (steps.make_train_step), all parameters trainable, Adam."""

  def __init__(self, arch: str, batch: dict, dtype: str, donate: bool = True):
    model = registry.build_classifier(arch, num_classes=NUM_CLASSES, dropout_rate=0.0,
                                      dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.adam(1e-3)
    step = steps.make_train_step(
        graphdef, tx,
        normalise=lambda x: preprocessing.normalize(
            x, registry.get_spec(arch).preprocessing, jnp.dtype(dtype)),
        trainable_mask=jax.tree.map(lambda _: True, params),
        class_weights=jnp.ones(NUM_CLASSES), label_smoothing=0.0,
        dropout_key=jax.random.key(0))
    # As in training: the batch split over every device along 'data', the state replicated.
    mesh = sharding.data_mesh()
    sharding.check_batch_size(batch['label'].shape[0], mesh, '--batch_size')
    replicated = sharding.replicated(mesh)
    self.state = jax.device_put(
        steps.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params)), replicated)
    self.batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=0 if donate else (),
                      out_shardings=(replicated, replicated)).lower(
        self.state, self.batch)
    self.trace_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = lowered.compile()  # what the persistent compilation cache saves
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # XLA's cost analysis of a partitioned program counts one device's share, and nothing inside
    # a custom call (see count_flops).
    self.flops_per_step = float(cost.get('flops', 0.0)) * mesh.devices.size if cost else 0.0
    self.run(2)  # warm-up

  def run(self, n: int):
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


class WorkerStep:
  """A step in a worker process (scripts/keras_step.py, torch_*_step.py) driven over pipes."""

  def __init__(self, command: list[str], env: dict, what: str, needs: str):
    # stderr to a file, not a pipe: a chatty worker would block on a full pipe nobody reads.
    self.stderr = tempfile.TemporaryFile('w+')
    self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self.stderr, text=True, env=env)
    self.what = what
    ready = self.process.stdout.readline()
    if not ready:
      error = self._stderr_tail().splitlines()[-1:] or ['no output']
      raise app.UsageError(
          f'The {what} worker ({command[0]}) failed: {error[0]}. --torch_python must name an '
          f'interpreter with {needs}.')
    self.info = json.loads(ready)
    self.compile_s = self.info['compile_s']

  @classmethod
  def keras(cls, python: str, backend: str, arch: str, image_size: int, batch_size: int):
    """Keras 3 on another backend (Keras Applications' model, Keras' own train step)."""
    command = [python, str(KERAS_STEP_SCRIPT), f'--arch={arch}', f'--image_size={image_size}',
               f'--batch_size={batch_size}', f'--num_classes={NUM_CLASSES}']
    return cls(command, dict(os.environ, KERAS_BACKEND=backend), f'Keras {backend}',
               f'{backend} and keras, e.g. a venv made with `pip install {backend} keras`')

  @classmethod
  def torch_reference(cls, python: str, arch: str, image_size: int, batch_size: int):
    """The reference PyTorch EfficientNet-Lite with PyTorch's own train step."""
    command = [python, str(TORCH_LITE_STEP_SCRIPT), f'--variant={arch.removeprefix("efficientnet_")}',
               f'--image_size={image_size}', f'--batch_size={batch_size}',
               f'--num_classes={NUM_CLASSES}']
    return cls(command, dict(os.environ), 'reference PyTorch', 'torch and efficientnet-lite-pytorch'
               ', e.g. a venv made with `pip install torch efficientnet-lite-pytorch numpy`')

  @classmethod
  def torch_resnet50(cls, python: str, image_size: int, batch_size: int):
    """Keras' ResNet50 in plain torch.nn with PyTorch's own train step."""
    command = [python, str(TORCH_RESNET50_STEP_SCRIPT), f'--image_size={image_size}',
               f'--batch_size={batch_size}', f'--num_classes={NUM_CLASSES}']
    return cls(command, dict(os.environ), 'plain PyTorch ResNet50',
               'torch and numpy, e.g. a venv made with `pip install torch numpy`')

  @classmethod
  def start(cls, name: str, python: str, arch: str, image_size: int, batch_size: int):
    """The worker that --compare=`name` names."""
    if name == 'keras_torch':
      return cls.keras(python, 'torch', arch, image_size, batch_size)
    if name == 'torch_resnet50':
      return cls.torch_resnet50(python, image_size, batch_size)
    return cls.torch_reference(python, arch, image_size, batch_size)

  def run(self, n: int):
    self.process.stdin.write(f'{n}\n')
    self.process.stdin.flush()
    if self.process.stdout.readline().strip() != 'done':
      raise RuntimeError(f'The {self.what} worker died: {self._stderr_tail()}')

  def _stderr_tail(self) -> str:
    self.process.wait(timeout=60)
    self.stderr.seek(0)
    return self.stderr.read()[-2000:].strip()

  def close(self):
    self.process.stdin.close()
    self.process.wait(timeout=60)


def timed(step, n: int) -> float:
  start = time.perf_counter()
  step.run(n)
  return time.perf_counter() - start


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use'])
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: the process's peak RSS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)
  cache = compilation_cache.enable()  # as the trainer does; SKINJAX_COMPILATION_CACHE=off for cold
  compared = [name for name in _COMPARE.value if name != 'none']
  if unknown := set(compared) - set(LABELS):
    raise app.UsageError(f'--compare: unknown {", ".join(sorted(unknown))}; use keras, keras_torch '
                         'or both, comma-separated, torch_resnet50 for resnet50, '
                         'torch_reference for efficientnet_lite*, or xla (skinjax without its '
                         'native CPU kernels).')
  if 'torch_resnet50' in compared and _ARCH.value != 'resnet50':
    raise app.UsageError(f'--compare=torch_resnet50: only --arch=resnet50 can use it, not '
                         f'{_ARCH.value}.')
  is_lite = _ARCH.value.startswith(LITE_PREFIX)
  if is_lite and set(compared) - {'torch_reference', 'xla'}:
    raise app.UsageError(f'--compare: Keras Applications has no {_ARCH.value}; compare it with '
                         'its reference PyTorch model: --compare=torch_reference.')
  if not is_lite and 'torch_reference' in compared:
    raise app.UsageError(f'--compare=torch_reference: only the EfficientNet-Lite models have one; '
                         f'compare {_ARCH.value} with keras or keras_torch.')
  if set(compared) - {'xla'} and not is_lite and _ARCH.value not in KERAS_APPLICATIONS:
    raise app.UsageError(f'--compare: Keras Applications has no {_ARCH.value}; compare one of '
                         f'{", ".join(KERAS_APPLICATIONS)}.')
  if set(compared) & set(WORKERS) and shutil.which(_TORCH_PYTHON.value) is None:
    # Popen would raise a FileNotFoundError traceback.
    raise app.UsageError(f'--torch_python={_TORCH_PYTHON.value}: no such interpreter; give the '
                         'python of a venv with torch (and keras, or efficientnet-lite-pytorch).')
  batch = synthetic_batch(_BATCH_SIZE.value, _IMAGE_SIZE.value)
  # The workers first: a --torch_python without torch fails before any long compile.
  workers = {name: WorkerStep.start(name, _TORCH_PYTHON.value, _ARCH.value, _IMAGE_SIZE.value,
                                    _BATCH_SIZE.value)
             for name in compared if name in WORKERS}
  steps_timed = {'skinjax': SkinjaxStep(_ARCH.value, batch, _DTYPE.value, _DONATE.value),
                 **workers}
  # The same step without the native kernels: timed with --compare=xla, and in any case the one
  # whose FLOPs XLA's cost analysis can count (it counts none inside oneDNN's custom calls).
  counted = steps_timed['skinjax']
  if 'xla' in compared or (jax.default_backend() == 'cpu' and kernels.onednn_enabled()):
    with kernels.forced('xla'):
      counted = SkinjaxStep(_ARCH.value, batch, _DTYPE.value, _DONATE.value)
    if 'xla' in compared:
      steps_timed['xla'] = counted
  if 'keras' in compared:
    steps_timed['keras'] = KerasStep(_ARCH.value, np.asarray(batch['image']),
                                     np.asarray(batch['label']), NUM_CLASSES, jit_compile=True)
  round_times = {name: [] for name in steps_timed}
  for _ in range(_ROUNDS.value):  # alternate, so slow phases of the machine hit all alike
    for name, step in steps_timed.items():
      round_times[name].append(timed(step, _STEPS.value))
  for worker in workers.values():
    worker.close()
  matmul_peak = matmul_peak_flops()
  conv_peak = conv_peak_flops() if jax.default_backend() == 'cpu' else 0.0
  # MFU against the peak of what the step's convolutions run on: oneDNN's 1x1 convolution (a
  # GEMM) where the native kernels are on; XLA's matmul elsewhere.
  on_onednn = jax.default_backend() == 'cpu' and kernels.onednn_enabled()
  peak = conv_peak if on_onednn else matmul_peak
  images = _BATCH_SIZE.value * _STEPS.value
  # The median round: robust to one round that a noisy neighbour slowed down.
  rates = {name: images / float(np.median(times)) for name, times in round_times.items()}
  images_per_sec = rates['skinjax']
  ours = steps_timed['skinjax']
  result = {
      'arch': _ARCH.value, 'image_size': _IMAGE_SIZE.value, 'batch_size': _BATCH_SIZE.value,
      'dtype': _DTYPE.value, 'donate': _DONATE.value, 'device': str(jax.devices()[0].device_kind),
      'num_devices': jax.device_count(),
      'images_per_sec': images_per_sec, 'trace_s': ours.trace_s, 'compile_s': ours.compile_s,
      'flops_per_step': counted.flops_per_step,
      'achieved_flops_per_sec': counted.flops_per_step * images_per_sec / _BATCH_SIZE.value,
      'matmul_peak_flops_per_sec': matmul_peak, 'conv_peak_flops_per_sec': conv_peak,
      'cpu_kernels': 'onednn' if on_onednn else 'xla',
      'mfu': counted.flops_per_step * images_per_sec / _BATCH_SIZE.value / peak,
      'peak_memory_bytes': peak_memory_bytes(),
      'compilation_cache': str(cache) if cache else None,
      'round_seconds': round_times,
  }
  for name in compared:
    result.update({f'{name}_images_per_sec': rates[name],
                   f'{name}_compile_s': steps_timed[name].compile_s,
                   f'speedup_vs_{name}': images_per_sec / rates[name]})
  if workers:  # all run by the same --torch_python
    result['torch_version'] = next(iter(workers.values())).info['backend_version']
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f"{result['arch']} {result['image_size']}px batch {result['batch_size']} "
        f"{result['dtype']} on {result['num_devices']}x {result['device']}")
  print(f"skinjax: {images_per_sec:.2f} images/s, trace {ours.trace_s:.1f} s + compile "
        f"{ours.compile_s:.1f} s, "
        f"{result['achieved_flops_per_sec'] / 1e9:.1f} GFLOP/s = MFU {result['mfu']:.1%} of the "
        f"measured {peak / 1e9:.0f} GFLOP/s peak (XLA matmul {matmul_peak / 1e9:.0f}, "
        f"1x1 convolution {conv_peak / 1e9:.0f}); CPU convolutions: {result['cpu_kernels']}")
  for name, label in LABELS.items():
    if name in compared:
      print(f"{label}: {rates[name]:.2f} images/s, first step {steps_timed[name].compile_s:.1f} s; "
            f"skinjax / {label} = {result[f'speedup_vs_{name}']:.2f}x")


if __name__ == '__main__':
  cli_flags.run(main)

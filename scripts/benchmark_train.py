r"""Measures the real skinjax train step (classifier head, optimiser, donation) and, optionally, Keras.

  python scripts/benchmark_train.py --arch=resnet50 --image_size=224 --batch_size=16 \
      [--dtype=float32|bfloat16] [--steps=N] [--rounds=R] [--compare=keras] [--json]

It reports steady-state images/s (after a warm-up, timed with block_until_ready), trace and
compile time (the persistent compilation cache is on, as in training; set
SKINJAX_COMPILATION_CACHE=off for a cold compile), peak memory, FLOPs per step from XLA's cost
analysis, and MFU against the float32 matmul peak measured in the same run. The batch is split
over all devices as in training (virtual CPU devices:
XLA_FLAGS=--xla_force_host_platform_device_count=8). --compare=keras builds the same architecture
with the same head, loss (sparse cross-entropy) and Adam in Keras 3 on JAX (jit_compile=True,
train_on_batch) and alternates timed rounds of the two, so that machine noise hits both alike; the ratio is
skinjax images/s over Keras images/s.
"""

import json
import os
import resource
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

from skinjax import compilation_cache
from skinjax import sharding
from skinjax import steps
from skinjax.data.constants import NUM_CLASSES
from skinjax.models import preprocessing
from skinjax.models import registry

_ARCH = flags.DEFINE_enum('arch', 'resnet50', registry.ARCHITECTURES, 'Architecture.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Square input side.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Global batch size.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (alternating with Keras).')
_COMPARE = flags.DEFINE_enum('compare', 'none', ['none', 'keras'], 'Also time Keras 3 on JAX.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')

KERAS_APPLICATIONS = {'vgg16': 'VGG16', 'xception': 'Xception', 'resnet50': 'ResNet50',
                      **{f'efficientnetb{i}': f'EfficientNetB{i}' for i in range(8)}}


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


def synthetic_batch(batch_size: int, image_size: int) -> dict:
  rng = np.random.default_rng(0)
  return {'image': jnp.asarray(rng.integers(0, 256, (batch_size, image_size, image_size, 3),
                                            dtype=np.uint8)),
          'label': jnp.asarray(rng.integers(0, NUM_CLASSES, batch_size), jnp.int32),
          'mask': jnp.ones(batch_size, jnp.float32)}


class SkinjaxStep:
  """The trainer's own jitted step (steps.make_train_step), all parameters trainable, Adam."""

  def __init__(self, arch: str, batch: dict, dtype: str):
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
    lowered = jax.jit(step, donate_argnums=0, out_shardings=(replicated, replicated)).lower(
        self.state, self.batch)
    self.trace_s = time.perf_counter() - start
    start = time.perf_counter()
    self.compiled = lowered.compile()  # what the persistent compilation cache saves
    self.compile_s = time.perf_counter() - start
    cost = self.compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # XLA's cost analysis of a partitioned program counts one device's share.
    self.flops_per_step = float(cost.get('flops', 0.0)) * mesh.devices.size if cost else 0.0
    self.run(2)  # warm-up

  def run(self, n: int):
    for _ in range(n):
      self.state, metrics = self.compiled(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


class KerasStep:
  """The same architecture, head, loss and Adam in Keras 3 (JAX backend, jit_compile=True)."""

  def __init__(self, arch: str, batch: dict, image_size: int):
    import keras
    backbone = getattr(keras.applications, KERAS_APPLICATIONS[arch])(
        weights=None, include_top=False, input_shape=(image_size, image_size, 3), pooling='avg')
    outputs = keras.layers.Dense(NUM_CLASSES)(backbone.output)
    self.model = keras.Model(backbone.input, outputs)
    self.model.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       jit_compile=True)
    module = arch if arch in ('vgg16', 'xception', 'resnet50') else 'efficientnet'
    preprocess = getattr(keras.applications, module).preprocess_input
    self.images = preprocess(np.asarray(batch['image'], np.float32))
    self.labels = np.asarray(batch['label'])
    start = time.perf_counter()
    self.run(1)
    self.compile_s = time.perf_counter() - start
    self.run(1)  # warm-up

  def run(self, n: int):
    for _ in range(n):
      self.model.train_on_batch(self.images, self.labels)


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
  batch = synthetic_batch(_BATCH_SIZE.value, _IMAGE_SIZE.value)
  ours = SkinjaxStep(_ARCH.value, batch, _DTYPE.value)
  theirs = KerasStep(_ARCH.value, batch, _IMAGE_SIZE.value) if _COMPARE.value == 'keras' else None
  our_times, their_times = [], []
  for _ in range(_ROUNDS.value):  # alternate, so slow phases of the machine hit both
    our_times.append(timed(ours, _STEPS.value))
    if theirs is not None:
      their_times.append(timed(theirs, _STEPS.value))
  peak = matmul_peak_flops()
  images = _BATCH_SIZE.value * _STEPS.value
  # The median round: robust to one round that a noisy neighbour slowed down.
  images_per_sec = images / float(np.median(our_times))
  result = {
      'arch': _ARCH.value, 'image_size': _IMAGE_SIZE.value, 'batch_size': _BATCH_SIZE.value,
      'dtype': _DTYPE.value, 'device': str(jax.devices()[0].device_kind),
      'num_devices': jax.device_count(),
      'images_per_sec': images_per_sec, 'trace_s': ours.trace_s, 'compile_s': ours.compile_s,
      'flops_per_step': ours.flops_per_step,
      'achieved_flops_per_sec': ours.flops_per_step * images_per_sec / _BATCH_SIZE.value,
      'matmul_peak_flops_per_sec': peak,
      'mfu': ours.flops_per_step * images_per_sec / _BATCH_SIZE.value / peak,
      'peak_memory_bytes': peak_memory_bytes(),
      'compilation_cache': str(cache) if cache else None,
  }
  if theirs is not None:
    keras_rate = images / float(np.median(their_times))
    result.update(keras_images_per_sec=keras_rate, keras_compile_s=theirs.compile_s,
                  speedup_vs_keras=images_per_sec / keras_rate)
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f"{result['arch']} {result['image_size']}px batch {result['batch_size']} "
        f"{result['dtype']} on {result['num_devices']}x {result['device']}")
  print(f"skinjax: {images_per_sec:.2f} images/s, trace {ours.trace_s:.1f} s + compile "
        f"{ours.compile_s:.1f} s, "
        f"{result['achieved_flops_per_sec'] / 1e9:.1f} GFLOP/s = MFU {result['mfu']:.1%} of the "
        f"measured {peak / 1e9:.0f} GFLOP/s matmul peak")
  if theirs is not None:
    print(f"Keras 3 (JAX): {result['keras_images_per_sec']:.2f} images/s, compile "
          f"{theirs.compile_s:.1f} s; skinjax / Keras = {result['speedup_vs_keras']:.2f}x")


if __name__ == '__main__':
  app.run(main)

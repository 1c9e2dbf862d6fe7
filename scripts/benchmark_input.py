r"""Measures the grain input pipeline on prepared HAM10000: read, decode, augment, batch.

  python scripts/benchmark_input.py --data_dir=~/tensorflow_datasets --image_size=224 \
      --batch_size=32 --workers=2 [--batches=N] [--with_step=ARCH]

It reports training images/s in total and per worker, after the workers have started. With
--with_step=ARCH the trainer's own jitted step runs on every batch (the pipeline prefetching
meanwhile, as in training), and it reports the fraction of the wall time spent waiting for the
next batch: 0% means the input never stalls the step.
"""

import json
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from ml_collections import config_flags

from skinjax.data import handle
from skinjax.data import pipeline
from skinjax.models import preprocessing
from skinjax.models import registry
from skinjax.runtime import cli_flags
from skinjax.runtime import steps
from skinjax.training import config_checks

# The pipeline prefetches (grain's read threads, and a batch or so per worker process), so the
# first batches timed are already waiting and arrive at once: timed over 2 batches, images/s
# came out several times too high. Which batches were prefetched cannot be told apart, so instead
# enough are timed that the prefetched ones are a small part: at least MIN_BATCHES, and
# BATCHES_PER_WORKER for each worker process (each holds about one batch ready).
MIN_BATCHES = 10
BATCHES_PER_WORKER = 2

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'configs/base.py', 'Config whose data and augmentation settings are used.')
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'Prepared HAM10000.')
_PREPARED_SIZE = flags.DEFINE_integer('prepared_size', 256, 'Short side it was prepared at.',
                                      lower_bound=1)
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 224, 'Side of the training crops.',
                                   lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Batch size.', lower_bound=1)
_WORKERS = flags.DEFINE_integer('workers', 2, 'grain worker processes (0: in the main process).',
                                lower_bound=0)
_BATCHES = flags.DEFINE_integer('batches', 40, 'Timed batches: at least '
                                f'{MIN_BATCHES}, and {BATCHES_PER_WORKER} per worker.', lower_bound=1)
_WITH_STEP = flags.DEFINE_enum('with_step', None, registry.ARCHITECTURES,
                               'Also run this architecture\'s train step.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')


def make_config():
  config = _CONFIG.value
  config.data.data_dir = _DATA_DIR.value
  config.data.prepared_size = _PREPARED_SIZE.value
  config.data.image_size = _IMAGE_SIZE.value
  config.data.num_workers = _WORKERS.value
  if _WITH_STEP.value:
    config.model.arch = _WITH_STEP.value
  return config


def make_step(config, batch, num_classes: int):
  """The trainer's train step on `config.model.arch`, compiled and warmed up."""
  model = registry.build_classifier(config.model.arch, num_classes=num_classes, dropout_rate=0.0,
                                    rngs=nnx.Rngs(0))
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optax.adam(1e-3)
  step = jax.jit(steps.make_train_step(
      graphdef, tx, normalise=preprocessing.normaliser(
          registry.get_spec(config.model.arch).preprocessing, config),
      trainable_mask=jax.tree.map(lambda _: True, params), class_weights=jnp.ones(num_classes),
      label_smoothing=0.0, dropout_key=jax.random.key(0)), donate_argnums=0)
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
  state, _ = step(state, batch)
  jax.block_until_ready(state)
  return step, state


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.set_verbosity(logging.WARNING)
  cli_flags.quiet_tfds_warnings()
  needed = max(MIN_BATCHES, BATCHES_PER_WORKER * _WORKERS.value)
  if _BATCHES.value < needed:
    cli_flags.fail(f'--batches={_BATCHES.value} is too few: batches prefetched before the clock '
                   'started would inflate images/s; '
                   f'pass --batches={needed} or more (with --workers={_WORKERS.value}).')
  config = make_config()
  try:
    config_checks.validate(config)
    dataset = handle.PreparedDataset.open(config)
    source, metadata, train = dataset.source, dataset.metadata, dataset.splits['train']
  except (ValueError, OSError) as error:  # e.g. an unprepared --data_dir: the message says how
    sys.exit('error: ' + ' '.join(str(error).split()))  # one line, the command in it included
  batches = iter(pipeline.train_dataset(
      source, train, metadata['label'][train], config=config, process_batch_size=_BATCH_SIZE.value,
      num_epochs=1000))
  first = next(batches)  # starts the workers (process spawn is not what is measured)
  for _ in range(3):
    next(batches)

  def timed_batches(step=None, state=None):
    """(seconds, seconds spent waiting for batches) over _BATCHES batches."""
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
      before = time.perf_counter()
      batch = next(batches)
      waiting += time.perf_counter() - before
      if step is not None:
        state, metrics = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
        jax.block_until_ready(metrics)  # as the trainer does at its logging points
    return time.perf_counter() - start, waiting

  images = _BATCHES.value * _BATCH_SIZE.value
  elapsed, _ = timed_batches()
  result = {
      'image_size': _IMAGE_SIZE.value, 'batch_size': _BATCH_SIZE.value, 'workers': _WORKERS.value,
      'images_per_sec': images / elapsed,
      'images_per_sec_per_worker': images / elapsed / max(1, _WORKERS.value),
  }
  if _WITH_STEP.value:
    step, state = make_step(config, {k: jnp.asarray(v) for k, v in first.items()},
                              dataset.description.num_classes)
    elapsed, waiting = timed_batches(step, state)
    result.update(with_step=_WITH_STEP.value, step_images_per_sec=images / elapsed,
                  input_wait_fraction=waiting / elapsed,
                  input_to_step_ratio=result['images_per_sec'] / (images / elapsed))
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f"input: {result['images_per_sec']:.0f} images/s with {_WORKERS.value} workers "
        f"({result['images_per_sec_per_worker']:.0f} per worker), {_IMAGE_SIZE.value} px, "
        f"batch {_BATCH_SIZE.value}")
  if _WITH_STEP.value:
    print(f"with the {_WITH_STEP.value} train step ({result['step_images_per_sec']:.1f} images/s): "
          f"it waited for input {result['input_wait_fraction']:.1%} of the time; the input "
          f"alone delivers {result['input_to_step_ratio']:.1f}x what the step consumes")


if __name__ == '__main__':
  cli_flags.run(main)

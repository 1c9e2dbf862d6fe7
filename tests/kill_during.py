"""Runs the tiny training of tests/test_reliability.py, and SIGKILLs itself at a chosen moment.

  python tests/kill_during.py POINT WORKDIR

POINT is where, in the second epoch, the process dies with no chance to clean up:
  none             train to the end (the uninterrupted reference, or the rerun after a kill)
  train_step       while a train step computes (right after dispatching it)
  checkpoint_write inside Orbax's write of the second checkpoint, before it is committed
  validation       after the first validation batch
  between_epochs   right after the first epoch's checkpoint is saved
  mid_epoch        with a checkpoint every 4 steps (config.train.checkpoint_every_steps), before
                   step 15: two steps after the mid-epoch checkpoint of step 12
"""

import os
import signal
import sys

from orbax.checkpoint._src.path import atomicity

from skinjax.evaluation import evaluate
from skinjax.runtime import checkpoint as ckpt
from skinjax.training import train
from tests.helpers import tiny_config

CONFIG = {'train.num_epochs': 3, 'data.num_workers': 2}


def die():
  os.kill(os.getpid(), signal.SIGKILL)


def after_calls(function, calls: int, then):
  """`function`, but `then()` runs once it has been called `calls` times."""
  count = 0

  def wrapper(*args, **kwargs):
    nonlocal count
    count += 1
    result = function(*args, **kwargs)
    if count == calls:
      then()
    return result
  return wrapper


def main(point: str, workdir: str):
  every = 4 if point == 'mid_epoch' else 0
  config = tiny_config(**CONFIG, **{'train.checkpoint_every_steps': every})
  steps_per_epoch = int(config.data.synthetic_examples * 0.6) // config.train.batch_size
  if point in ('train_step', 'mid_epoch'):  # the jitted step returns at dispatch; die meanwhile
    original = train.sharding.global_batch
    count = 0
    die_at = steps_per_epoch + 3 if point == 'train_step' else 15

    def batch_then_die(*args, **kwargs):
      nonlocal count
      count += 1
      if count == die_at:
        die()
      return original(*args, **kwargs)
    train.sharding.global_batch = batch_then_die
  elif point == 'checkpoint_write':
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
      original_finalize = cls.finalize
      count = {'n': 0}

      async def finalize_or_die(self, *args, _original=original_finalize, _count=count, **kw):
        _count['n'] += 1
        if _count['n'] == 3:  # latest(1), best(1), then latest(2): everything written, not committed
          die()
        return await _original(self, *args, **kw)
      cls.finalize = finalize_or_die
  elif point == 'validation':
    original_predict = evaluate.predict
    calls = {'n': 0}

    def predict(step_fn, params, rest, batches, *args, **kwargs):
      calls['n'] += 1
      if calls['n'] == 2:
        batches = after_calls_iter(batches)
      return original_predict(step_fn, params, rest, batches, *args, **kwargs)
    train.evaluate.predict = predict
  elif point == 'between_epochs':
    ckpt.RunCheckpoints.save_latest = after_calls(ckpt.RunCheckpoints.save_latest, 1, die)
  elif point != 'none':
    raise SystemExit(f'unknown POINT {point}')
  train.train_and_evaluate(config, workdir)


def after_calls_iter(batches):
  for i, batch in enumerate(batches):
    if i == 1:
      die()
    yield batch


if __name__ == '__main__':
  main(*sys.argv[1:])

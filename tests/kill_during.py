"""Runs tiny_config()'s training (with two grain workers), and SIGKILLs itself at a chosen moment.

  python tests/kill_during.py POINT WORKDIR

tests/test_reliability.py runs it again and again in one workdir, each process resuming where the
one before was killed. POINT is where this process dies, with no chance to clean up:
  none             train to the end
  train_step       while the train step of step 12 (in the second epoch) computes
  mid_epoch        with a checkpoint every 4 steps (config.train.checkpoint_every_steps), while
                   step 15 computes: three steps after the mid-epoch checkpoint of step 12
  validation       after the first batch of this process's first validation
  checkpoint_write inside Orbax's write of this process's first `latest` checkpoint, before it
                   is committed
  between_epochs   right after this process's first `latest` checkpoint is saved
"""

import os
import signal
import sys

# The trainer's modules are imported in the functions that use them: grain's workers are spawned
# and run this file's top level again, and they need none of these (~0.6 CPU-s each, 12 workers
# in tests/test_reliability.py).

DIES_AT_STEP = {'train_step': 12, 'mid_epoch': 15}


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


def die_while_step_computes(step: int):
  """The loop asks StopSignals.at_step(s) right after dispatching step s, which returns at once."""
  from skinjax.training import train  # noqa: PLC0415
  original = train.preemption.StopSignals.at_step

  def at_step(self, current):
    if current == step:
      die()
    return original(self, current)
  train.preemption.StopSignals.at_step = at_step


def die_in_the_first_latest_commit():
  from orbax.checkpoint._src.path import atomicity  # noqa: PLC0415
  for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
    original_finalize = cls.finalize

    async def finalize_or_die(self, *args, _original=original_finalize, **kwargs):
      if 'latest' in str(self.get_final()):  # everything written, nothing committed
        die()
      return await _original(self, *args, **kwargs)
    cls.finalize = finalize_or_die


def die_in_the_first_validation():
  from skinjax.evaluation import evaluate  # noqa: PLC0415
  from skinjax.training import train  # noqa: PLC0415
  original_predict = evaluate.predict

  def predict(step_fn, params, rest, batches, *args, **kwargs):
    return original_predict(step_fn, params, rest, die_after_one(batches), *args, **kwargs)
  train.evaluate.predict = predict


def die_after_one(batches):
  for i, batch in enumerate(batches):
    if i == 1:
      die()
    yield batch


def main(point: str, workdir: str):
  from skinjax.runtime import checkpoint as ckpt  # noqa: PLC0415
  from skinjax.training import train  # noqa: PLC0415
  from tests.helpers import tiny_config  # noqa: PLC0415
  every = 4 if point == 'mid_epoch' else 0
  config = tiny_config(**{'data.num_workers': 2, 'train.checkpoint_every_steps': every})
  if point in DIES_AT_STEP:
    die_while_step_computes(DIES_AT_STEP[point])
  elif point == 'checkpoint_write':
    die_in_the_first_latest_commit()
  elif point == 'validation':
    die_in_the_first_validation()
  elif point == 'between_epochs':
    ckpt.RunCheckpoints.save_latest = after_calls(ckpt.RunCheckpoints.save_latest, 1, die)
  elif point != 'none':
    raise SystemExit(f'unknown POINT {point}')
  train.train_and_evaluate(config, workdir)


if __name__ == '__main__':
  main(*sys.argv[1:])

"""Exact resume after SIGKILL anywhere, the workdir lock, resume guards and bad-run inputs."""

import errno
import json
import math
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from skinjax.data import handle
from skinjax.data import sources
from skinjax.runtime import checkpoint as ckpt
from skinjax.training import train
from skinjax.training import workdir as workdir_lib
from tests.helpers import REPO, tiny_config

# The processes of one run, in order: where each is SIGKILLed (tests/kill_during.py) and the step
# it resumes from, its predecessor's last complete checkpoint; the last one trains to the end.
# Every kill's leftovers (an uncommitted checkpoint, log records past the checkpoint, the lock)
# meet the next process, and each resume feeds the checkpoints of the ones after it, so one
# wrong resume would show in the final state.
PROCESSES = (('train_step', None), ('mid_epoch', 9), ('validation', 12), ('checkpoint_write', 12),
             ('between_epochs', 12), ('none', 18))


def run_wrapper(point, workdir):
  env = {**os.environ, 'PYTHONPATH': str(REPO)}
  return subprocess.run([sys.executable, 'tests/kill_during.py', point, str(workdir)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=300)


def latest_state(workdir):
  step = max(int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir()
             if p.name.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore((workdir / 'checkpoints' / 'latest' / str(step) / 'state')
                                 .absolute())
  return step, state


def test_sigkill_anywhere_then_rerun_equals_the_uninterrupted_run(tiny_run, tmp_path):
  uninterrupted = tiny_run[0]  # the same config, in one process and without grain workers
  for point, resumes_from in PROCESSES:
    # run() returns at all: grain's workers died with the trainer, or they would hold its stdout.
    result = run_wrapper(point, tmp_path)
    if resumes_from is None:
      assert 'Resuming' not in result.stdout, point
    else:
      assert 'Taking over the stale lock' in result.stdout, point
      assert f'Resuming from step {resumes_from} (' in result.stdout, (point, result.stdout)
    if point == 'none':
      assert result.returncode == 0, result.stderr[-3000:]
      continue
    assert result.returncode == -9, f'the run was not killed at {point}: {result.stderr[-2000:]}'
    assert not (tmp_path / 'report').exists(), point
    assert (tmp_path / workdir_lib.LOCK_NAME).exists(), f'SIGKILL at {point} leaves the lock'

  assert not (tmp_path / workdir_lib.LOCK_NAME).exists()
  # The whole report, metrics with their bootstrap intervals included, is the same.
  assert (json.loads((tmp_path / 'report' / 'metrics.json').read_text())
          == json.loads((uninterrupted / 'report' / 'metrics.json').read_text()))
  step, state = latest_state(tmp_path)
  expected_step, expected = latest_state(uninterrupted)
  assert step == expected_step
  for ours, theirs in zip(jax.tree.leaves(state), jax.tree.leaves(expected), strict=True):
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------- lock


def write_lock(workdir, **holder):
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lib.LOCK_NAME).write_text(json.dumps(holder))


def test_a_live_trainer_keeps_its_workdir(tmp_path):
  other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    write_lock(tmp_path, pid=other.pid, host=socket.gethostname(), started='earlier')
    with pytest.raises(workdir_lib.WorkdirError, match=f'Another trainer \\(pid {other.pid}'):
      train.train_and_evaluate(tiny_config(), str(tmp_path))
  finally:
    other.kill()
    other.wait()
  assert json.loads((tmp_path / workdir_lib.LOCK_NAME).read_text())['pid'] == other.pid
  assert not (tmp_path / 'checkpoints').exists(), 'nothing may be written beside a live trainer'


def test_a_lock_from_another_host_is_not_guessed_at(tmp_path):
  write_lock(tmp_path, pid=1, host='some-other-host', started='earlier')
  with pytest.raises(workdir_lib.WorkdirError, match='some-other-host.*delete'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))


def test_a_stale_lock_is_taken_over_and_released_at_the_end(copy_of_tiny_run, capsys):
  # A finished run takes the lock too, before it finds nothing left to train: no training needed.
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  write_lock(copy_of_tiny_run, pid=dead.pid, host=socket.gethostname(), started='earlier')
  train.train_and_evaluate(tiny_config(), str(copy_of_tiny_run))
  assert f'stale lock of pid {dead.pid}' in capsys.readouterr().out
  assert not (copy_of_tiny_run / workdir_lib.LOCK_NAME).exists()


def test_two_trainers_cannot_both_take_the_lock(tmp_path):
  first = workdir_lib.Lock(tmp_path)
  first.acquire()
  other = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:  # pretend the lock is another live process's
    write_lock(tmp_path, pid=other.pid, host=socket.gethostname(), started='now')
    with pytest.raises(workdir_lib.WorkdirError, match='Another trainer'):
      workdir_lib.Lock(tmp_path).acquire()
  finally:
    other.kill()
    other.wait()


# ------------------------------------------------------------------------ resume guards


def test_config_json_records_the_dataset(tiny_run):
  saved = json.loads((tiny_run[0] / 'config.json').read_text())
  assert saved['dataset'] == handle.PreparedDataset.open(tiny_config()).fingerprint
  assert saved['model']['arch'] == 'small_cnn'


def test_resuming_with_another_config_is_refused_then_allowed(copy_of_tiny_run, capsys):
  workdir = copy_of_tiny_run
  (workdir / 'report').rename(workdir / 'old_report')  # unfinished, as far as resuming goes
  before = (workdir / 'config.json').read_text()
  more_epochs = tiny_config(**{'train.num_epochs': 3})
  with pytest.raises(workdir_lib.WorkdirError, match=r'train\.num_epochs: 2 -> 3'):
    train.train_and_evaluate(more_epochs, str(workdir))
  assert (workdir / 'config.json').read_text() == before, 'a refusal must not touch the run'

  more_epochs.train.allow_config_change = True
  metrics = train.train_and_evaluate(more_epochs, str(workdir))
  assert metrics['epochs_run'] == 3
  assert 'Resuming from step' in capsys.readouterr().out
  assert json.loads((workdir / 'config.json').read_text())['train']['num_epochs'] == 3


def test_resuming_on_another_dataset_is_refused(copy_of_tiny_run):
  workdir = copy_of_tiny_run
  with pytest.raises(workdir_lib.WorkdirError, match='the dataset'):
    train.train_and_evaluate(tiny_config(**{'data.synthetic_examples': 300}), str(workdir))


def test_harmless_changes_resume_without_asking(copy_of_tiny_run):
  workdir = copy_of_tiny_run
  metrics = train.train_and_evaluate(tiny_config(**{'train.log_every_steps': 5}), str(workdir))
  assert metrics['epochs_run'] == 2


def test_a_workdir_that_cannot_be_written(tmp_path):
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('x')
  with pytest.raises(workdir_lib.WorkdirError, match='Cannot write to the workdir'):
    train.train_and_evaluate(tiny_config(), str(not_a_dir / 'run'))
  assert not_a_dir.read_text() == 'x'


# --------------------------------------------------------------------------- disk full


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tiny_run, tmp_path, monkeypatch):
  config, reference = tiny_config(), tiny_run[1]

  from orbax.checkpoint._src.handlers import json_checkpoint_handler
  handler = json_checkpoint_handler.JsonCheckpointHandler
  original = handler.async_save
  saves = {'n': 0}

  async def full_disk(self, directory, *args, **kwargs):
    if 'latest' in str(directory).split(os.sep):
      saves['n'] += 1
      if saves['n'] == 2:  # the first epoch's latest fits, the second's does not
        raise OSError(errno.ENOSPC, 'No space left on device')
    return await original(self, directory, *args, **kwargs)

  monkeypatch.setattr(handler, 'async_save', full_disk)
  workdir = tmp_path / 'run'
  with pytest.raises(OSError, match=r'No space left on device.*step 9 is intact'):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(handler, 'async_save', original)
  assert ckpt.has_checkpoint(workdir)
  resumed = train.train_and_evaluate(config, str(workdir))
  assert resumed == reference


# ------------------------------------------------------------------------ non-finite loss


def poisoned_class_weights(monkeypatch, class_index=3):
  """A NaN weight for one class: every batch holding it has a NaN loss."""
  original = sources.class_weights

  def weights(*args, **kwargs):
    values = np.array(original(*args, **kwargs), np.float32)
    values[class_index] = np.nan
    return values
  monkeypatch.setattr(sources, 'class_weights', weights)


def test_nonfinite_loss_stops_naming_the_step(tmp_path, monkeypatch):
  poisoned_class_weights(monkeypatch)
  with pytest.raises(FloatingPointError, match=r'at step \d+\. Lower config\.train\.learning_rate'):
    train.train_and_evaluate(tiny_config(), str(tmp_path))
  assert not (tmp_path / 'report').exists()


def test_skip_nonfinite_skips_and_counts(tmp_path, monkeypatch):
  poisoned_class_weights(monkeypatch)
  config = tiny_config(**{'train.skip_nonfinite': True, 'train.num_epochs': 1})
  metrics = train.train_and_evaluate(config, str(tmp_path))
  skips = metrics['nonfinite_skips']
  assert skips > 0
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert max(r.get('nonfinite_skips', 0) for r in records) == skips
  # One step per record (log_every_steps=1): a skipped step counts in neither the loss nor the
  # accuracy, so both are NaN for it and both finite otherwise.
  step_records = [r for r in records if 'step_losses' in r]
  assert sum(math.isnan(r['train_accuracy']) for r in step_records) == skips
  assert all(math.isnan(r['train_loss']) == math.isnan(r['train_accuracy']) for r in step_records)
  _, state = latest_state(tmp_path)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state['params']))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state['rest']))
  assert np.isfinite(metrics['balanced_accuracy'])


def test_train_record_leaves_skipped_steps_out_of_loss_and_accuracy():
  fetched = [{'loss': 1.0, 'accuracy': 0.5, 'skipped': 0},
             {'loss': float('nan'), 'accuracy': 0.9, 'skipped': 1},
             {'loss': 3.0, 'accuracy': 0.7, 'skipped': 0}]
  record = train._train_record(12, 2, fetched, skips=1)
  assert record['step_losses'] == [1.0, 3.0] and record['train_loss'] == 2.0
  assert record['train_accuracy'] == pytest.approx(0.6)
  only_skipped = train._train_record(13, 2, fetched[1:2], skips=2)
  assert math.isnan(only_skipped['train_loss']) and math.isnan(only_skipped['train_accuracy'])

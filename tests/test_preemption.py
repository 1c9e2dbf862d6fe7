"""SIGTERM and Ctrl-C: the trainer saves at the step it is in, says so in one line, and resumes."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest

from tests.helpers import REPO
from tests.test_cli import TINY, main_command

# Two grain worker processes, as a real run has, and a record per step to watch the run by.
FLAGS = [*TINY, '--config.train.num_epochs=3', '--config.data.num_workers=2',
         '--config.train.log_every_steps=1']
STEPS_PER_EPOCH = 9


def logged_steps(workdir):
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line)['step'] for line in path.read_text().splitlines() if line.endswith('}')]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('uninterrupted')
  result = subprocess.run(main_command(workdir, *FLAGS), cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # The end of a run is quiet too: grain's shared memory leaves no resource-tracker warning.
  assert 'leaked' not in result.stderr and 'Traceback' not in result.stderr
  return workdir


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_epoch_saves_there_and_the_rerun_equals_the_uninterrupted_run(
    uninterrupted, tmp_path, signum):
  process = subprocess.Popen(main_command(tmp_path, *FLAGS), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while max(logged_steps(tmp_path), default=0) < STEPS_PER_EPOCH + 2:  # into the second epoch
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()
    time.sleep(0.05)
  os.kill(process.pid, signum)
  stdout, stderr = process.communicate(timeout=300)

  assert process.returncode == 1
  last_line = stderr.strip().splitlines()[-1]
  stopped_at = int(last_line.split('Stopped at step ')[1].split(',')[0])
  assert last_line == (f'Stopped at step {stopped_at}, saved to {tmp_path}. Run the same command '
                       'again to continue.')
  assert STEPS_PER_EPOCH + 2 <= stopped_at < 3 * STEPS_PER_EPOCH
  assert 'Traceback' not in stdout + stderr and 'leaked' not in stderr
  saved = [int(p.name) for p in (tmp_path / 'checkpoints' / 'latest').iterdir() if p.name.isdigit()]
  assert saved == [stopped_at]
  assert not (tmp_path / 'report').exists()

  rerun = subprocess.run(main_command(tmp_path, *FLAGS), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'Resuming from step {stopped_at}' in rerun.stdout
  assert (json.loads((tmp_path / 'report' / 'metrics.json').read_text())
          == json.loads((uninterrupted / 'report' / 'metrics.json').read_text()))


def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
  """A scheduler may notify one host only: JAX's preemption sync makes both save the same step."""
  flags = [*TINY, '--config.train.num_epochs=3', '--config.train.log_every_steps=1',
           '--config.data.num_workers=0']
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      main_command(tmp_path, *flags, f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  deadline = time.monotonic() + 300
  while max(logged_steps(tmp_path), default=0) < STEPS_PER_EPOCH + 2:
    assert all(p.poll() is None for p in processes) and time.monotonic() < deadline
    time.sleep(0.05)
  os.kill(processes[1].pid, signal.SIGTERM)
  outputs = [p.communicate(timeout=300)[0] for p in processes]

  assert [p.returncode for p in processes] == [1, 1], outputs
  stopped = {line for output in outputs for line in output.splitlines()
             if line.startswith('Stopped at step ')}
  assert len(stopped) == 1, outputs  # the same step on both
  step = int(stopped.pop().split('Stopped at step ')[1].split(',')[0])
  saved = [int(p.name) for p in (tmp_path / 'checkpoints' / 'latest').iterdir() if p.name.isdigit()]
  assert saved == [step]

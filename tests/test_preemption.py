"""SIGTERM and Ctrl-C: the trainer saves at the step it is in, says so in one line, and resumes."""

import json
import os
import signal
import socket
import subprocess
import time

from tests.helpers import FAST_COMPILE, REPO
from tests.test_cli import TINY, main_command

# tiny_config()'s run (the session's tiny_run), with two grain worker processes as a real run has.
FLAGS = [*TINY, '--config.train.num_epochs=2', '--config.data.num_workers=2',
         '--config.train.log_every_steps=1']
STEPS_PER_EPOCH = 9


def logged_steps(workdir):
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line)['step'] for line in path.read_text().splitlines() if line.endswith('}')]


def assert_quiet(stdout, stderr):
  # grain's shared memory leaves no resource-tracker warning, at a stop or at the end of a run.
  assert 'Traceback' not in stdout + stderr and 'leaked' not in stderr, stderr[-3000:]


def stop_with(signum, workdir, after_step):
  """Starts (or resumes) the run, sends `signum` once it logged `after_step`: (stopped step, stdout)."""
  process = subprocess.Popen(main_command(workdir, *FLAGS), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while max(logged_steps(workdir), default=0) < after_step:
    assert process.poll() is None and time.monotonic() < deadline, process.communicate()
    time.sleep(0.02)
  os.kill(process.pid, signum)
  stdout, stderr = process.communicate(timeout=300)

  assert process.returncode == 1, stderr[-3000:]
  last_line = stderr.strip().splitlines()[-1]
  stopped_at = int(last_line.split('Stopped at step ')[1].split(',')[0])
  assert last_line == (f'Stopped at step {stopped_at}, saved to {workdir}. Run the same command '
                       'again to continue.')
  assert_quiet(stdout, stderr)
  saved = [int(p.name) for p in (workdir / 'checkpoints' / 'latest').iterdir() if p.name.isdigit()]
  assert saved == [stopped_at]
  assert not (workdir / 'report').exists()
  assert after_step <= stopped_at
  return stopped_at, stdout


def test_signals_mid_epoch_save_there_and_the_rerun_equals_the_uninterrupted_run(tiny_run,
                                                                                  tmp_path):
  """SIGTERM in the first epoch, then Ctrl-C (SIGINT) in the second epoch of the resumed run."""
  first, _ = stop_with(signal.SIGTERM, tmp_path, after_step=1)
  assert first < STEPS_PER_EPOCH, 'the stop was not mid-epoch'
  second, stdout = stop_with(signal.SIGINT, tmp_path, after_step=STEPS_PER_EPOCH + 1)
  assert f'Resuming from step {first} ' in stdout
  assert second < 2 * STEPS_PER_EPOCH, 'the stop was not mid-epoch'

  rerun = subprocess.run(main_command(tmp_path, *FLAGS), cwd=REPO, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f'Resuming from step {second} ' in rerun.stdout
  assert_quiet(rerun.stdout, rerun.stderr)
  assert (json.loads((tmp_path / 'report' / 'metrics.json').read_text())
          == json.loads((tiny_run[0] / 'report' / 'metrics.json').read_text()))


def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
  """A scheduler may notify one host only: JAX's preemption sync makes both save the same step."""
  flags = [*TINY, '--config.train.num_epochs=2', '--config.train.log_every_steps=1',
           '--config.data.num_workers=0']
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      main_command(tmp_path, *flags, f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, env=dict(os.environ, XLA_FLAGS=FAST_COMPILE), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  deadline = time.monotonic() + 300
  while max(logged_steps(tmp_path), default=0) < 2:
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

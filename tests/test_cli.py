"""`python -m skinjax.main` as a user runs it: config errors, missing data, SIGKILL and resume."""

import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = ['--config.data.synthetic_examples=240', '--config.data.image_size=24',
        '--config.train.batch_size=16', '--config.train.eval_batch_size=32']


def main_command(workdir, *flags, config='configs/demo.py'):
  return [sys.executable, '-m', 'skinjax.main', f'--config={config}', f'--workdir={workdir}', *flags]


def run_main(workdir, *flags, **kwargs):
  return subprocess.run(main_command(workdir, *flags, **kwargs), cwd=REPO, capture_output=True,
                        text=True, timeout=600)


def test_unknown_config_key_fails_with_the_key_named(tmp_path):
  result = run_main(tmp_path / 'w', '--config.train.batch_sise=8')
  assert result.returncode != 0
  assert 'batch_sise' in result.stderr


def test_wrong_type_in_config_override_fails(tmp_path):
  result = run_main(tmp_path / 'w', '--config.train.batch_size=eight')
  assert result.returncode != 0
  assert 'batch_size' in result.stderr


def test_unprepared_dataset_gives_the_prepare_command(tmp_path):
  result = run_main(tmp_path / 'w', f'--config.data.data_dir={tmp_path / "tfds"}',
                    config='configs/scratch_cnn.py')
  assert result.returncode != 0
  assert 'scripts/prepare_ham10000.py' in result.stderr
  assert 'doi:10.7910/DVN/DBW86T' in result.stderr
  assert 'Traceback' not in result.stderr


def test_unknown_architecture_exits_with_the_valid_ones(tmp_path):
  result = run_main(tmp_path / 'w', '--config.model.arch=resnet18', *TINY)
  assert result.returncode != 0
  assert 'small_cnn' in result.stderr and 'Traceback' not in result.stderr


def test_sigkill_after_first_checkpoint_then_rerun_resumes(tmp_path):
  workdir = tmp_path / 'w'
  flags = [*TINY, '--config.train.num_epochs=4']
  process = subprocess.Popen(main_command(workdir, *flags), cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  latest = workdir / 'checkpoints' / 'latest'
  deadline = time.monotonic() + 300
  while not any(p.name.isdigit() for p in latest.glob('*')) and time.monotonic() < deadline:
    assert process.poll() is None, 'the run ended before its first checkpoint'
    time.sleep(0.2)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  saved = sorted(int(p.name) for p in latest.glob('*') if p.name.isdigit())
  assert saved, 'no checkpoint was written before the kill'

  result = run_main(workdir, *flags)
  assert result.returncode == 0, result.stderr
  assert f'Resuming from step {saved[-1]}' in result.stdout
  assert (workdir / 'report' / 'metrics.json').exists()

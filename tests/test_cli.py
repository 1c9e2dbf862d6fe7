"""`python -m skinjax.main` as a user runs it: config errors, missing data, several processes."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from skinjax.runtime import distributed
from tests.helpers import FAST_COMPILE

REPO = pathlib.Path(__file__).resolve().parents[1]
# tiny_config() as flags, its figures off included.
TINY = ['--config.data.synthetic_examples=240', '--config.data.image_size=24',
        '--config.train.batch_size=16', '--config.train.eval_batch_size=32',
        '--config.eval.figures=false']


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


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  """Multi-host on CPU: two JAX processes (gloo) see the same global batches as one process."""
  import json
  import socket
  flags = [*TINY, '--config.train.num_epochs=1', '--config.train.log_every_steps=1',
           '--config.train.optimizer=sgd', '--config.data.num_workers=0']
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  processes = [subprocess.Popen(
      main_command(tmp_path / 'two', *flags, f'--coordinator_address=localhost:{port}',
                   '--num_processes=2', f'--process_id={i}'),
      cwd=REPO, env=dict(os.environ, XLA_FLAGS=FAST_COMPILE), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  outputs = [p.communicate(timeout=600)[0] for p in processes]
  assert all(p.returncode == 0 for p in processes), outputs
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count=2 {FAST_COMPILE}')
  single = subprocess.run(main_command(tmp_path / 'one', *flags), cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr

  def losses(workdir):
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    return [loss for r in records for loss in r.get('step_losses', [])]

  two, one = losses(tmp_path / 'two'), losses(tmp_path / 'one')
  assert len(two) == len(one) > 3
  # Both run the same 2-way partitioned program; only the collectives differ (gloo between
  # processes, in-process between devices), so the whole epoch agrees, not just its start.
  np.testing.assert_allclose(two, one, rtol=1e-4)
  final = {name: json.loads((tmp_path / name / 'report' / 'metrics.json').read_text())
           for name in ('one', 'two')}
  for key in ('accuracy', 'balanced_accuracy', 'macro_f1'):
    assert final['two'][key] == pytest.approx(final['one'][key], abs=1e-6), key


@pytest.mark.parametrize('env, expected', [
    ({}, False),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, False),  # one task: stay a single process
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4'}, True),
    ({'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '4(x2)'}, True),
    ({'OMPI_COMM_WORLD_SIZE': '2'}, True),
    ({'TPU_WORKER_HOSTNAMES': 'host-0'}, False),
    ({'TPU_WORKER_HOSTNAMES': 'host-0,host-1'}, True),
])
def test_multi_process_launchers_are_detected(monkeypatch, env, expected):
  for name in ('SLURM_JOB_ID', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  assert distributed.launched_as_many_processes() is expected

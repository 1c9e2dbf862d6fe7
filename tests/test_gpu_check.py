"""scripts/gpu_check.sh in its CPU dry mode, so that the prepared GPU check keeps working."""

import json
import os
import subprocess
import sys

from tests.helpers import FAST_COMPILE, REPO


def gpu_check(*args, **env):
  return subprocess.run(['bash', 'scripts/gpu_check.sh', *map(str, args)], cwd=REPO,
                        env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)


def test_dry_mode_writes_every_step_figures(tmp_path):
  # LLVM at -O0: the dry run checks that every step runs and reports, not how fast; 83 -> 50 CPU-s.
  result = gpu_check('--dry', tmp_path, PYTHON=sys.executable, XLA_FLAGS=FAST_COMPILE)
  assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
  assert 'gpu_check: all steps passed' in result.stdout
  figures = {path.stem: json.loads(path.read_text()) for path in tmp_path.glob('*.json')}
  trains = [name for name in figures if name.startswith('train_')]
  assert {'devices', 'input', 'demo_train'} <= figures.keys() and trains, sorted(figures)
  assert figures['devices']['device_count'] > 0
  for name in trains:
    assert figures[name]['images_per_sec'] > 0 and figures[name]['compile_s'] > 0
    assert figures[name]['flops_per_step'] > 0
  # The dry input step is benchmark_input.py with a small_cnn step on synthetic images: this is
  # that script's test too.
  assert figures['input']['images_per_sec'] > 0 and figures['input']['step_images_per_sec'] > 0
  assert 0 <= figures['input']['input_wait_fraction'] <= 1
  demo = figures['demo_train']
  assert demo['train_time_s'] > 0 and demo['num_examples'] > 0
  assert 0 < demo['balanced_accuracy'] <= 1
  assert all(f['wall_s'] >= 0 for f in figures.values())


def test_a_failing_step_is_named(tmp_path):
  result = gpu_check('--dry', tmp_path, PYTHON='false')  # every python step fails at once
  assert result.returncode != 0
  assert "gpu_check: step 'devices' failed" in result.stderr
  assert not list(tmp_path.glob('*.json'))

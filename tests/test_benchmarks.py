"""The benchmark scripts run and report what they promise (tiny sizes: no timing is judged here)."""

import json
import os
import subprocess
import sys

import pytest

from skinjax import kernels

from tests.helpers import FAST_COMPILE, REPO


def benchmark_env(xla_flags='', **env):
  """LLVM at -O0 (a third less CPU): these tests check what the scripts report, not its speed."""
  return dict(os.environ, XLA_FLAGS=f'{xla_flags} {FAST_COMPILE}'.strip(), **env)


def run_json(*args, env=None):
  result = subprocess.run([sys.executable, *args, '--json'], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env or benchmark_env())
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


# VGG16, the simplest architecture Keras Applications has, at a tiny size: one run serves the
# report, --compare=xla and --compare=keras (each benchmark run costs ~20 s on 2 cores).
SMALL_RUN = ('scripts/benchmark_train.py', '--arch=vgg16', '--image_size=32', '--batch_size=2',
             '--steps=1')


@pytest.fixture(scope='module')
def one_device_run():
  """The small benchmark on one device against XLA's convolutions and Keras, read by the tests
  below."""
  return run_json(*SMALL_RUN, '--rounds=2', '--compare=xla,keras')


def test_benchmark_train_reports_rate_flops_and_mfu(one_device_run):
  result = one_device_run
  assert result['images_per_sec'] > 0 and result['compile_s'] > 0
  assert result['flops_per_step'] > 0 and 0 < result['mfu'] < 1
  assert result['matmul_peak_flops_per_sec'] > 0 and result['conv_peak_flops_per_sec'] > 0
  # oneDNN's custom calls count no FLOPs in XLA's cost analysis: the count comes from the step
  # compiled on the pure-JAX path, so it is there whichever path ran.
  assert result['cpu_kernels'] == ('onednn' if kernels.onednn_enabled() else 'xla')
  # --compare=xla: the same step without the native kernels, in alternating rounds.
  assert len(result['round_seconds']['xla']) == len(result['round_seconds']['skinjax']) == 2
  assert result['speedup_vs_xla'] == pytest.approx(
      result['images_per_sec'] / result['xla_images_per_sec'])
  assert result['donate'] is True  # as in training; --nodonate measures what it saves


def test_benchmark_train_counts_the_flops_of_all_devices(one_device_run):
  """XLA's cost analysis of a partitioned step covers one device's share; the script scales it."""
  one = one_device_run
  # The count comes from the step on the pure-JAX path whichever kernels run (the test above):
  # with them chosen outright, that step is the only one compiled, not a oneDNN one beside it.
  two = run_json(*SMALL_RUN, '--rounds=1',
                 env=benchmark_env('--xla_force_host_platform_device_count=2',
                                   SKINJAX_CPU_KERNELS='xla'))
  assert (one['num_devices'], two['num_devices'], two['cpu_kernels']) == (1, 2, 'xla')
  # Not scaled, two devices would count half; each of them also updates the replicated parameters,
  # which adds 8% here (VGG16's 15M parameters, 2 images of 32 px): XLA's counts are exact.
  assert two['flops_per_step'] == pytest.approx(one['flops_per_step'], rel=0.1)


def run_failing(*args):
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode != 0
  return result.stderr


def test_benchmark_train_compares_with_keras_in_alternating_rounds(one_device_run):
  result = one_device_run
  assert result['keras_images_per_sec'] > 0 and result['keras_compile_s'] > 0
  assert result['speedup_vs_keras'] == pytest.approx(
      result['images_per_sec'] / result['keras_images_per_sec'])
  assert [len(result['round_seconds'][name]) for name in ('skinjax', 'keras')] == [2, 2]


def _worker_case(compare, arch, env_var, needs):
  return pytest.param(compare, arch, env_var, id=compare, marks=pytest.mark.skipif(
      not os.environ.get(env_var), reason=f'set {env_var} to an interpreter with {needs}'))


@pytest.mark.parametrize('compare, arch, env_var', [
    _worker_case('keras_torch', 'vgg16', 'SKINJAX_TORCH_PYTHON', 'torch and keras'),
    # Two workers in one run, as docs/performance.md's resnet50 table compares them.
    _worker_case('keras_torch,torch_resnet50', 'resnet50', 'SKINJAX_TORCH_PYTHON',
                 'torch and keras'),
    _worker_case('torch_reference', 'efficientnet_lite0', 'SKINJAX_LITE_REFERENCE_PYTHON',
                 'torch and efficientnet-lite-pytorch (scripts/lite_reference_logits.py says how)'),
])
def test_benchmark_train_compares_with_pytorch_in_a_worker(compare, arch, env_var):
  """Keras 3 on PyTorch, a plain PyTorch ResNet50 or the reference PyTorch EfficientNet-Lite,
  each timed in a worker process, in rounds that alternate with skinjax's."""
  result = run_json('scripts/benchmark_train.py', f'--arch={arch}', '--image_size=32',
                    '--batch_size=2', '--steps=1', '--rounds=2', f'--compare={compare}',
                    f'--torch_python={os.environ[env_var]}')
  assert result['torch_version']
  for name in compare.split(','):
    assert result[f'{name}_images_per_sec'] > 0 and result[f'{name}_compile_s'] > 0
    assert result[f'speedup_vs_{name}'] == pytest.approx(
        result['images_per_sec'] / result[f'{name}_images_per_sec'])
  assert [len(times) for times in result['round_seconds'].values()] == [2] * (
      1 + len(compare.split(',')))


@pytest.mark.skipif(not os.environ.get('SKINJAX_TORCH_PYTHON'),
                    reason='set SKINJAX_TORCH_PYTHON to an interpreter with torch and numpy')
def test_torch_resnet50_has_keras_resnet50_weight_count():
  """The plain PyTorch ResNet50 has Keras Applications' layers: its weights, counted as Keras counts
  them (BatchNorm's moving statistics included), with Keras' 1000-class head, are Keras' figures."""
  result = subprocess.run([os.environ['SKINJAX_TORCH_PYTHON'], 'scripts/torch_resnet50_step.py',
                           '--count_params', '--num_classes=1000'], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout) == {'params': 25_636_712, 'trainable_params': 25_583_592}


def test_benchmark_train_torch_resnet50_is_for_resnet50_only():
  stderr = run_failing('scripts/benchmark_train.py', '--arch=vgg16', '--compare=torch_resnet50')
  assert '--compare=torch_resnet50: only --arch=resnet50 can use it, not vgg16.' in stderr


def test_benchmark_train_comparison_errors_name_the_fix(tmp_path):
  stderr = run_failing('scripts/benchmark_train.py', '--arch=small_cnn', '--compare=keras')
  assert 'Keras Applications has no small_cnn' in stderr
  no_torch = tmp_path / 'python'  # an interpreter that cannot import torch
  no_torch.write_text('#!/bin/sh\necho "ModuleNotFoundError: No module named torch" >&2\nexit 1\n')
  no_torch.chmod(0o755)
  stderr = run_failing('scripts/benchmark_train.py', '--arch=vgg16', '--compare=keras_torch',
                       f'--torch_python={no_torch}')
  assert 'No module named torch' in stderr and '--torch_python must name' in stderr
  stderr = run_failing('scripts/benchmark_train.py', '--arch=efficientnet_lite0',
                       '--compare=torch_reference', f'--torch_python={no_torch}')
  assert 'No module named torch' in stderr and 'efficientnet-lite-pytorch' in stderr
  stderr = run_failing('scripts/benchmark_train.py', '--arch=efficientnet_lite0', '--compare=keras')
  assert 'compare it with its reference PyTorch model: --compare=torch_reference' in stderr
  stderr = run_failing('scripts/benchmark_train.py', '--arch=vgg16', '--compare=torch_reference')
  assert 'only the EfficientNet-Lite models have one' in stderr


def test_benchmark_conv_reports_each_kind_of_convolution():
  if not kernels.onednn_enabled():
    pytest.skip('LOUD SKIP: the oneDNN kernels are unavailable here')
  result = subprocess.run([sys.executable, 'scripts/benchmark_conv.py', '--batch_size=2',
                           '--size=9', '--channels=16', '--repeats=1', '--json'], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=benchmark_env())
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
  assert len(rows) == 13 and {row['grouping'] for row in rows} == {'dense', 'depthwise'}
  for row in rows:  # the same sums as lax.conv_general_dilated, to float32 rounding
    assert max(row[f'max_error_{part}'] for part in ('forward', 'input_grad', 'kernel_grad')) < 1e-5
    assert row['onednn_ms'] > 0 and row['xla_ms'] > 0

"""$SKINJAX_CPU_KERNELS: oneDNN, XLA's path, and the fallback when oneDNN cannot be built."""

import os
import pathlib
import shutil
import subprocess
import sys

from test_cli import REPO, TINY, main_command

from tests.helpers import FAST_COMPILE


def run_main(workdir, *flags, env):
  return subprocess.run(main_command(workdir, *flags), cwd=REPO, capture_output=True, text=True,
                        timeout=600, env=env)


def _env(**values):
  # LLVM at -O0: these runs check that a path trains or fails with the right line, not its speed;
  # alike in every run, so that the failing ones read the model's initialisers, compiled before
  # they fail, back from the persistent cache.
  return dict(os.environ, XLA_FLAGS=FAST_COMPILE, **values)


def _onednn_enabled(env) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', 'from skinjax import kernels; print(kernels.onednn_enabled())'],
      cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def test_training_runs_on_the_xla_path(tmp_path):
  """The fallback every machine without oneDNN runs, kept tested where oneDNN is on."""
  result = run_main(tmp_path / 'w', *TINY, '--config.train.num_epochs=1',
                    env=_env(SKINJAX_CPU_KERNELS='xla'))
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'w' / 'report' / 'metrics.json').exists()
  assert 'oneDNN' not in result.stderr


def test_a_failed_build_falls_back_with_one_line(tmp_path):
  """No compiler (or no oneDNN): XLA's path and one line saying why and how to silence it."""
  broken = _env(SKINJAX_KERNEL_CACHE=str(tmp_path / 'cache'), CXX='/bin/false',
                SKINJAX_CPU_KERNELS='auto')
  result = _onednn_enabled(broken)
  assert result.returncode == 0 and result.stdout.strip() == 'False'
  warnings = [line for line in result.stderr.splitlines() if 'oneDNN' in line]
  assert len(warnings) == 1 and 'SKINJAX_CPU_KERNELS=xla' in warnings[0], result.stderr


def test_forcing_unavailable_kernels_is_one_error_line(tmp_path):
  broken = _env(SKINJAX_KERNEL_CACHE=str(tmp_path / 'cache'), CXX='/bin/false',
                SKINJAX_CPU_KERNELS='onednn')
  result = run_main(tmp_path / 'w', *TINY, env=broken)
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith('error: SKINJAX_CPU_KERNELS=onednn, '
                                                           'but the oneDNN kernels are unavailable')
  assert 'Traceback' not in result.stderr
  result = run_main(tmp_path / 'w2', *TINY, env=_env(SKINJAX_CPU_KERNELS='fast'))
  assert result.stderr.strip().splitlines()[-1].startswith("error: SKINJAX_CPU_KERNELS='fast' is "
                                                           'not one of auto, onednn, xla')


def test_an_unwritable_build_cache_falls_back_with_one_line(tmp_path):
  """A read-only home must not stop training: XLA's path and a line naming the variable."""
  blocker = tmp_path / 'file'
  blocker.write_text('')  # a file where the cache folder should be: mkdir fails as when read-only
  result = _onednn_enabled(_env(SKINJAX_KERNEL_CACHE=str(blocker / 'cache'),
                                SKINJAX_CPU_KERNELS='auto'))
  assert result.returncode == 0 and result.stdout.strip() == 'False', result.stderr
  assert 'SKINJAX_KERNEL_CACHE' in result.stderr and 'Traceback' not in result.stderr


_BUILD_WITH_ONEDNN_FROM = """
import pathlib, sys
from skinjax.kernels import build
installed = build._package_file
if len(sys.argv) > 1:  # another environment's oneDNN: the same file, in another folder
  build._package_file = lambda package, name: (
      pathlib.Path(sys.argv[1]) if package == build.RUNTIME_PACKAGE else installed(package, name))
build.library()
"""


def test_a_build_outlives_the_environment_that_made_it(tmp_path):
  """The build cache is per user and environments come and go (a clean clone's .venv, deleted
  after its test run): a build made against another environment's oneDNN, since deleted, loads
  with this environment's, and is not built again."""
  from skinjax.kernels import build
  other_lib = tmp_path / 'other_env' / 'lib'
  other_lib.mkdir(parents=True)
  shutil.copy(build._package_file(build.RUNTIME_PACKAGE, '/libdnnl.so'), other_lib / 'libdnnl.so')
  env = _env(SKINJAX_KERNEL_CACHE=str(tmp_path / 'cache'))
  for argv in ([str(other_lib / 'libdnnl.so')], []):
    result = subprocess.run([sys.executable, '-c', _BUILD_WITH_ONEDNN_FROM, *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    shutil.rmtree(tmp_path / 'other_env', ignore_errors=True)
  builds = list((tmp_path / 'cache').glob(f'*/{build.LIBRARY_NAME}'))
  assert len(builds) == 1

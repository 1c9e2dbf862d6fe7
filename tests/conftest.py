"""Fixtures every test file may use; plain helpers are in tests/helpers.py."""

import os
import shutil

# `make test` runs two workers on CI's two cores. libgomp's threads (oneDNN's convolutions) spin
# after each parallel region by default, on the core the other worker needs; passive waiting keeps
# the same threads and results. Measured: 6-8% less CPU for test_train and test_phase_plan beside
# another busy process, within noise for the whole suite. Set before the kernels' library loads
# libgomp, and inherited by every command the tests start.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

# Every test process, and every command it starts, compiles at LLVM -O0 (tests.helpers.
# FAST_COMPILE): the suite's programs are tiny and compiled afresh, so compiling them costs more
# than running them (test_models.py and test_phase_plan.py: a fifth less time). It changes float
# rounding, not behaviour; every number a test compares is computed at the same level, or with a
# float32 tolerance. Set before jax starts its backend, which reads XLA_FLAGS once (importing
# jax does not start it).
from tests.helpers import FAST_COMPILE  # noqa: E402

if 'xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()

import jax  # noqa: E402
import pytest  # noqa: E402
from jax._src.interpreters import partial_eval  # noqa: E402

from tests.helpers import WarmPython  # noqa: E402
from tests.helpers import tiny_config  # noqa: E402


@pytest.fixture(scope='module')
def fast_tracing():
  """Work around quadratic tracing in JAX 0.10 (jax-ml/jax#40041).

  NNX probes `tracer.sharding` on every Variable update (RNG counters, BatchNorm statistics) and
  JAX answers with an AttributeError whose message walks every equation traced so far. Tracing
  EfficientNetB7 takes ~12 s instead of ~1 s. Only the text of that error message changes.
  """
  patch = pytest.MonkeyPatch()
  if hasattr(partial_eval.DynamicJaxprTracer, '_origin_msg'):
    patch.setattr(partial_eval.DynamicJaxprTracer, '_origin_msg', lambda self: '')
  yield
  patch.undo()


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """(workdir, test metrics) of one finished run of tiny_config(), trained once per test process.

  Tests read it; a test that would change it (resume, evaluate into it) works on a copy
  (`copy_of_tiny_run`).
  """
  from skinjax.training import train
  workdir = tmp_path_factory.mktemp('tiny_run')
  return workdir, train.train_and_evaluate(tiny_config(), str(workdir))


@pytest.fixture
def copy_of_tiny_run(tiny_run, tmp_path):
  return shutil.copytree(tiny_run[0], tmp_path / 'run')


@pytest.fixture(scope='module')
def python(tmp_path_factory):
  """Runs commands as a user would, each in a fork of a Python with the libraries imported
  (tests.helpers.WarmPython): one per test file."""
  warm = WarmPython(tmp_path_factory.mktemp('commands'))
  yield warm
  warm.close()


@pytest.fixture(scope='session', autouse=True)
def shared_compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the whole test run, kept out of the user's ~/.cache.

  Most tests train the same tiny models at the same shapes, each in a fresh process or with
  freshly traced functions; with a shared cache each program is compiled once per run instead of
  once per test. The cache only stores the compiled executables (keyed by the program and the
  compile options), so what a test computes and asserts is unchanged. Every test process sees it:
  - the xdist workers, through jax.config (the two workers share one folder);
  - the CLIs they start (main.py, evaluate.py, ...), through $SKINJAX_COMPILATION_CACHE;
  - other child processes (tests/kill_during.py, `python -c`), through $JAX_COMPILATION_CACHE_DIR.
  tests/test_compilation_cache.py sets its own folders to test the cache itself.
  """
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base
  directory = root / 'jax-compilation'
  directory.mkdir(exist_ok=True)
  patch = pytest.MonkeyPatch()
  patch.setenv('SKINJAX_COMPILATION_CACHE', str(directory))
  patch.setenv('JAX_COMPILATION_CACHE_DIR', str(directory))
  # A tiny model's programs compile in well under JAX's default threshold of a second.
  patch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  previous = (jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update('jax_compilation_cache_dir', str(directory))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  yield directory
  jax.config.update('jax_compilation_cache_dir', previous[0])
  jax.config.update('jax_persistent_cache_min_compile_time_secs', previous[1])
  patch.undo()


# The files that take minutes, longest first (pytest --durations on the 2-core machine). `make
# test` runs two xdist workers that take whole files in collection order (--dist loadfile):
# starting these first leaves the short files to fill the gaps, where alphabetical order would
# leave test_weights*.py, the longest, to run last on one worker while the other idles.
SLOW_FILES_FIRST = ('test_weights.py', 'test_cli_errors.py', 'test_reliability.py',
                    'test_phase_plan.py', 'test_dataset_runs.py', 'test_weights_published.py',
                    'test_ham10000_real.py', 'test_efficientnet_lite.py', 'test_cli.py',
                    'test_evaluation_scripts.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept

"""Helpers that several test files share (imported explicitly, not through conftest)."""

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tarfile

from configs import demo
from skinjax.models import small_cnn

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = REPO / 'tests' / 'golden'

NARROW_WIDTHS = (4, 4, 8, 8)

# XLA_FLAGS for test processes whose programs compile afresh in every test run and whose numbers
# are only compared with other programs compiled alike. Multi-device programs never come back from
# the persistent cache: the oneDNN convolutions' custom partitioning puts a per-process pointer into
# JAX's cache key, and of several processes only process 0 writes the cache, under a key that
# process 1 does not share. LLVM's -O0 takes a third or more off such tiny runs (their random
# initialisers, threefry, compile in 3 s instead of 13); it changes float rounding, not behaviour.
FAST_COMPILE = '--xla_backend_optimization_level=0'


def tiny_config(**overrides):
  config = demo.get_config()
  config.data.synthetic_examples = 240
  config.data.image_size = 24
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.num_epochs = 2
  config.train.log_every_steps = 1
  # About a second of plotting per report, in most of the suite's ~90 reports; the tests of the
  # figures turn them on.
  config.eval.figures = False
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config


@contextlib.contextmanager
def narrow_small_cnn():
  """small_cnn with 4-8 channels per stage instead of 32-256: a checkpoint of it is a few KB.

  For runs whose work directories are committed as test data (tests/golden/legacy_runs).
  """
  original = small_cnn.SmallCNN.__init__.__defaults__
  small_cnn.SmallCNN.__init__.__defaults__ = (NARROW_WIDTHS,)
  try:
    yield
  finally:
    small_cnn.SmallCNN.__init__.__defaults__ = original


def unpack_golden(archive: str, destination: pathlib.Path) -> pathlib.Path:
  """Extracts tests/golden/`archive` (a .tar.gz of test data) into `destination`."""
  with tarfile.open(GOLDEN / archive) as opened:
    opened.extractall(destination, filter='data')
  return destination


class WarmPython:
  """tests/cli_zygote.py: each command in a fork of a Python that has imported skinjax's
  libraries, so that a command costs its own work, not ~2 s of imports. Its environment is the
  test's (or `env`): variables that jax reads at import (JAX_*) are the zygote's, those read when a
  backend starts (XLA_FLAGS) or by skinjax (SKINJAX_*) the command's."""

  def __init__(self, scratch: pathlib.Path):
    self.scratch = scratch
    self.process = subprocess.Popen([sys.executable, str(REPO / 'tests' / 'cli_zygote.py')],
                                    cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    text=True)

  def run(self, args, env: dict | None = None, cwd=REPO) -> subprocess.CompletedProcess:
    """`args`: a script's path and its arguments, or ['-m', module, ...], run in `cwd`."""
    args = [str(arg) for arg in args]
    out, err = self.scratch / 'stdout', self.scratch / 'stderr'
    request = {'argv': args, 'cwd': str(cwd), 'stdout': str(out), 'stderr': str(err),
               'env': dict(os.environ if env is None else env)}
    self.process.stdin.write(json.dumps(request) + '\n')
    self.process.stdin.flush()
    answer = json.loads(self.process.stdout.readline())
    return subprocess.CompletedProcess(args, answer['returncode'], out.read_text(),
                                       err.read_text())

  def close(self):
    self.process.stdin.close()
    self.process.wait(timeout=60)


def eight_device_report(script: str) -> dict:
  """Runs `script` (Python source) in a process with 8 virtual CPU devices, from the repository
  root, and returns the JSON object its last line prints."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8', JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def one_and_eight_devices(fn, batch_args, replicated_args, call_target: str) -> dict:
  """For a script of eight_device_report: `fn(*batch_args, *replicated_args)` jitted on 1 and on
  8 devices, the batch arguments split over them along the batch, the others replicated. Returns
  the batch sizes that the custom calls whose target starts with `call_target` see (from their
  operands shaped like the first batch argument), how many such calls the 8-device program has,
  whether it gathers anything, and the largest difference between the two results."""
  import re  # noqa: PLC0415 (only the scripts' processes use these)
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from skinjax.runtime import sharding  # noqa: PLC0415
  jitted = jax.jit(fn)
  out = {}
  for n in (1, 8):
    mesh = sharding.data_mesh(jax.devices()[:n])
    args = ([jax.device_put(a, sharding.batch_sharding(mesh)) for a in batch_args]
            + [jax.device_put(a, sharding.replicated(mesh)) for a in replicated_args])
    out[n] = jax.device_get(jitted(*args))
  hlo = jitted.lower(*args).compile().as_text()
  calls = [line for line in hlo.splitlines() if f'custom_call_target="{call_target}' in line]
  batch_shape = re.escape(','.join(map(str, batch_args[0].shape[1:])))
  return {
      'batches': sorted({int(m) for line in calls
                         for m in re.findall(rf'f32\[(\d+),{batch_shape}\]', line)}),
      'calls': len(calls), 'all_gather': 'all-gather' in hlo,
      'difference': max(float(np.max(np.abs(a - b)))
                        for a, b in zip(jax.tree.leaves(out[1]), jax.tree.leaves(out[8])))}

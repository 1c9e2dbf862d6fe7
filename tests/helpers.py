"""Helpers that several test files share (imported explicitly, not through conftest)."""

import contextlib
import pathlib
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

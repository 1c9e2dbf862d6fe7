"""Helpers that several test files share (imported explicitly, not through conftest)."""

import contextlib

from skinjax.models import small_cnn

NARROW_WIDTHS = (4, 4, 8, 8)


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

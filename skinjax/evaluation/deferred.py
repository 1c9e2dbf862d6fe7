"""sklearn and matplotlib, imported where they are first used rather than when a command starts.

Together they cost every command about 1.5 s of start-up (sklearn brings scipy and pandas with
it), and many runs of a command never touch them: a bad flag, path or weight file is reported,
a prediction printed or a checkpoint restored before any metric or plot is computed.
"""

import importlib
import sys
from typing import Callable


class DeferredModule:
  """Stands for the module `name`, imported (after `before()`) at the first attribute read."""

  def __init__(self, name: str, before: Callable[[], None] = lambda: None):
    self._name, self._before = name, before

  def __getattr__(self, attribute: str):
    module = sys.modules.get(self._name)
    if module is None:
      self._before()
      module = importlib.import_module(self._name)
    return getattr(module, attribute)


def _file_only_backend():
  import matplotlib
  matplotlib.use('Agg')  # plots are only written to files: no display needed, or wanted


sklearn_metrics = DeferredModule('sklearn.metrics')
pyplot = DeferredModule('matplotlib.pyplot', before=_file_only_backend)
matplotlib = DeferredModule('matplotlib')

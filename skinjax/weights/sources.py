"""What every weight source does, one per file format, and the check of a path the user gives.

The formats: Keras .h5 (keras_h5_source), PyTorch .pth (torch_pth_source) and a directory that
scripts/port_weights.py wrote (ported_dir_source). skinjax.weights.pretrained picks the one that
reads `config.model.init`.
"""

import pathlib

import numpy as np

from skinjax.models import registry
from skinjax.weights import identity
from skinjax.weights.keras_h5 import WeightFileError

Values = dict[tuple[str, ...], np.ndarray]

INIT_FLAG = 'config.model.init'
MANIFEST = 'manifest.json'  # what makes a folder a ported weight directory


class WeightSource:
  """The weights of one architecture in one format.

  `locate` finds the file for 'imagenet' or checks the path the user gives; `read` gives the
  variable path -> value mapping of the model with or without its top; `identify` says what a
  file is, by its md5.
  """

  def __init__(self, arch: str):
    self.arch = arch
    self.weights = registry.get_spec(arch).weights

  def locate(self, init: str, *, include_top: bool) -> pathlib.Path:
    raise NotImplementedError

  def read(self, path: pathlib.Path, *, include_top: bool) -> Values:
    raise NotImplementedError

  def identify(self, path: pathlib.Path) -> str:
    return identity.identify(path, self.arch)

  def describe(self, path: pathlib.Path) -> str:
    """Where the weights came from, for the log and the run's record."""
    return f'{path} ({self.identify(path)})'


def _either(options: list[str]) -> str:
  return options[0] if len(options) == 1 else f'{", ".join(options[:-1])} or {options[-1]}'


def user_path(init: str, file_options: tuple[str, ...], *, flag: str = INIT_FLAG,
              imagenet_option: str = '"imagenet"') -> pathlib.Path:
  """The weight file or ported directory `init` names, refused early and by the user's own flag
  (config.model.init, or a script's --weights) where it cannot be one; `file_options` say what
  the format takes, for the message."""
  path = pathlib.Path(init).expanduser()
  if not path.exists():
    offered = (['"scratch"', imagenet_option] if flag == INIT_FLAG else []) + list(file_options)
    raise FileNotFoundError(f'{flag}={init!r}: no such file or directory. Give '
                            f'{_either(offered)}.')
  if path.is_dir() and not (path / MANIFEST).is_file():
    # A folder is only ever a ported weight directory; say so now, not when the model is built.
    raise WeightFileError(
        f'{flag}={init!r} is a folder but not a ported weight directory (it has no {MANIFEST}); '
        f'give {_either(list(file_options))}.')
  return path

"""Keras Applications' legacy .h5 weight files: the Keras cache, $SKINJAX_WEIGHTS_DIR or a user's file.

Nothing is ever downloaded: there may be no network. A file is read as an ordered layer list
(keras_h5) and paired with the model layer by layer, as Keras does (mapping).
"""

import os
import pathlib

from skinjax.models import registry
from skinjax.weights import identity, keras_h5, mapping, sources
from skinjax.weights.keras_h5 import WeightFileError

WEIGHTS_DIR_ENV = 'SKINJAX_WEIGHTS_DIR'
KERAS_CACHE = pathlib.Path('~/.keras/models')


def search_dirs() -> list[pathlib.Path]:
  dirs = [pathlib.Path(os.environ[WEIGHTS_DIR_ENV])] if os.environ.get(WEIGHTS_DIR_ENV) else []
  return [d.expanduser() for d in dirs + [KERAS_CACHE]]


def user_file(init: str, flag: str) -> pathlib.Path:
  """The .h5 file a script's flag (--keras_h5) names; a folder will not do there."""
  path = pathlib.Path(init).expanduser()
  if path.is_dir():
    raise WeightFileError(f'{flag}={init!r} is a folder, not a Keras .h5 weight file; give the '
                          '.h5 file itself.')
  if not path.is_file():
    raise FileNotFoundError(f'{flag}={init!r}: no such file. Give a Keras .h5 weight file '
                            '(see --helpfull for where Keras downloads them).')
  return path


class KerasH5Source(sources.WeightSource):
  FILE_OPTIONS = ('a Keras .h5 weight file', 'a directory written by scripts/port_weights.py')

  def locate(self, init: str, *, include_top: bool) -> pathlib.Path:
    if init.endswith('.pth'):
      raise WeightFileError(
          f'{init} is a PyTorch .pth file; {self.arch} takes Keras .h5 weight files. .pth '
          f'weights are for {", ".join(registry.LITE_PRETRAINED_ARCHITECTURES)}.')
    if init == 'imagenet':
      return self.find_published(include_top=include_top)
    return sources.user_path(init, self.FILE_OPTIONS)

  def find_published(self, *, include_top: bool) -> pathlib.Path:
    """The standard Keras file; without the top, the `_notop` file (or, failing that, the full one)."""
    weights = self.weights
    names = [weights.file_name] if include_top else [weights.notop_file_name, weights.file_name]
    for directory in search_dirs():
      for name in names:
        if (directory / name).is_file():
          return directory / name
    wanted = names[0]
    raise FileNotFoundError(
        f'ImageNet weights for {self.arch} not found: no {wanted} in '
        f'{" or ".join(str(d) for d in search_dirs())}. There is no download at run time; fetch '
        f'it where there is a network (Keras downloads it from {weights.url(include_top)}) and '
        f'put it into ~/.keras/models/ or ${WEIGHTS_DIR_ENV}. Or port it once: python '
        f'scripts/port_weights.py --arch={self.arch} --keras_h5=/path/to/{wanted} --out=DIR and '
        'set --config.model.init=DIR.')

  def read(self, path: pathlib.Path, *, include_top: bool) -> sources.Values:
    return self._mapped(path, self._layers(path), include_top=include_top)

  def read_as_stored(self, path: pathlib.Path) -> tuple[sources.Values, bool]:
    """The file's values, with the top where it has one (what a port keeps), and whether it has."""
    layers = self._layers(path)
    include_top = mapping.file_has_top(self.arch, layers)
    return self._mapped(path, layers, include_top=include_top), include_top

  def _layers(self, path: pathlib.Path) -> list[keras_h5.KerasLayer]:
    try:
      return keras_h5.read_h5(path)
    except WeightFileError as error:
      raise WeightFileError(f'{error} Keras downloads the {self.arch} weights from '
                            f'{self.weights.url(False)} (without the top) and '
                            f'{self.weights.url(True)}.') from error

  def _mapped(self, path: pathlib.Path, layers: list[keras_h5.KerasLayer], *,
              include_top: bool) -> sources.Values:
    model = mapping.abstract_model(self.arch, include_top=include_top)
    with identity.naming_another_models_file(path, self.arch):
      # By count, as Keras pairs layers: the top's names differ between Keras generations.
      if include_top and not mapping.file_has_top(self.arch, layers):
        mapping.keras_to_flax(self.arch, mapping.abstract_model(self.arch, include_top=False),
                              layers, source=str(path))  # does it fit without the top? Else why not.
        raise WeightFileError(
            f'{path} has no ImageNet top (a _notop file?); the 1000-class model needs '
            f'{self.weights.file_name}.')
      return mapping.keras_to_flax(self.arch, model, layers, source=str(path))

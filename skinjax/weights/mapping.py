"""Maps Keras layers onto a skinjax model's variables, checking that everything fits.

Every weight-holding module of the Flax model is one Keras layer (a `Slot`). Its Keras name comes
from the module path by the table below; Keras' weight order within a layer is fixed by the layer
type. Layers Keras names automatically (Xception's residual convs, EfficientNet's Normalization:
'conv2d_3', 'normalization_1', numbered per session) are matched by their order in the file, as
Keras itself loads these files. Every target variable must be filled and every source weight used
with the same shape; otherwise the error lists what does not fit.
"""

import dataclasses
from collections.abc import Callable

import numpy as np
from absl import logging
from flax import nnx

from skinjax.models import efficientnet, registry, resnet
from skinjax.models.layers import SeparableConv
from skinjax.weights.keras_h5 import KerasLayer, WeightFileError


def _to_grouped_depthwise(kernel: np.ndarray) -> np.ndarray:
  return kernel.transpose(0, 1, 3, 2)  # Keras (kh, kw, C, 1) -> Flax grouped (kh, kw, 1, C)


# (Keras weight name, variable path within the module, Keras -> Flax transform or None)
WeightMap = tuple[str, tuple[str, ...], Callable | None]
_BATCH_NORM: tuple[WeightMap, ...] = (
    ('gamma', ('scale',), None), ('beta', ('bias',), None),
    ('moving_mean', ('mean',), None), ('moving_variance', ('var',), None))
_NORMALIZATION: tuple[WeightMap, ...] = (
    ('mean', ('mean',), None), ('variance', ('variance',), None), ('count', ('count',), None))
_KNOWN_KERAS_NAMES = {'kernel', 'bias', 'depthwise_kernel', 'pointwise_kernel', 'gamma', 'beta',
                      'moving_mean', 'moving_variance', 'mean', 'variance', 'count'}
# Keras 3 renamed DepthwiseConv2D's 'depthwise_kernel' (the published files) to 'kernel'.
_ALSO_ACCEPTED = {'depthwise_kernel': {'kernel'}}


def _module_weights(module) -> tuple[WeightMap, ...] | None:
  """The Keras weights of the layer `module` stands for, in Keras' order; None: not a layer."""
  if isinstance(module, SeparableConv):
    maps = [('depthwise_kernel', ('depthwise', 'kernel'), _to_grouped_depthwise),
            ('pointwise_kernel', ('pointwise', 'kernel'), None)]
    return tuple(maps + ([('bias', ('pointwise', 'bias'), None)] if module.pointwise.use_bias
                         else []))
  if isinstance(module, nnx.BatchNorm):
    return _BATCH_NORM
  if isinstance(module, efficientnet.Normalization):
    return _NORMALIZATION
  if isinstance(module, nnx.Conv):
    kernel = (('depthwise_kernel', ('kernel',), _to_grouped_depthwise)
              if module.feature_group_count > 1 else ('kernel', ('kernel',), None))
    return (kernel,) + ((('bias', ('bias',), None),) if module.use_bias else ())
  if isinstance(module, nnx.Linear):
    return (('kernel', ('kernel',), None), ('bias', ('bias',), None))
  return None


# Module path -> Keras layer name (None: named automatically by Keras, matched by order).
def _joined(path):
  return '_'.join(path)


def _efficientnet_name(path):
  return None if path == ('stem', 'normalization') else _joined(path)


def _xception_name(path):
  return None if path[-1] in ('residual_conv', 'residual_bn') else _joined(path)


def _resnet_name(path):
  if len(path) == 2 and path[1] in resnet.KERAS_SUFFIX:
    return f'{path[0]}_{resnet.KERAS_SUFFIX[path[1]]}'  # ('conv2_block1', 'bn1') -> '..._1_bn'
  return _joined(path)  # ('conv1', 'conv') -> 'conv1_conv', ('predictions',)


def _keras_naming(arch: str) -> Callable[[tuple[str, ...]], str | None]:
  if arch.startswith('efficientnet'):
    return _efficientnet_name
  return {'vgg16': _joined, 'xception': _xception_name, 'resnet50': _resnet_name}[arch]


@dataclasses.dataclass
class Slot:
  keras_name: str | None
  path: tuple[str, ...]
  weights: tuple[WeightMap, ...]
  shapes: tuple[tuple[int, ...], ...]  # Keras-layout shapes the file must hold


def layer_slots(arch: str, model: nnx.Module) -> list[Slot]:
  """The model's Keras layers, in model order (`layer_groups()`, then module order)."""
  if registry.get_spec(arch).keras_weights is None:
    raise ValueError(f'{arch} has no Keras ImageNet weights; architectures with them: '
                     f'{", ".join(registry.PRETRAINED_ARCHITECTURES)}.')
  naming = _keras_naming(arch)
  modules = {tuple(map(str, path)): m for path, m in nnx.iter_modules(model)}
  separable = [p for p, m in modules.items() if isinstance(m, SeparableConv)]
  slots = []
  for path, module in modules.items():
    weights = _module_weights(module)
    if weights is None or any(path[:len(s)] == s and path != s for s in separable):
      continue  # not a layer, or the inner conv of a SeparableConv
    shapes = []
    for _, var_path, transform in weights:
      variable = module
      for part in var_path:
        variable = getattr(variable, part)
      shape = tuple(variable.shape)
      shapes.append(shape if transform is None else (*shape[:2], shape[3], shape[2]))
    slots.append(Slot(naming(path), path, weights, tuple(shapes)))
  group_order = {name: i for i, name in enumerate(model.layer_groups())}
  return sorted(slots, key=lambda s: group_order[s.path[0]])  # stable: keeps module order within


def _weight_basename(name: str) -> str:
  return name.split('/')[-1].split(':')[0]  # 'block1_conv1/kernel:0' -> 'kernel'


def _listing(names, limit=8) -> str:
  names = list(names)
  shown = ', '.join(names[:limit])
  return shown + (f', ... ({len(names)} in all)' if len(names) > limit else '')


def keras_to_flax(arch: str, model: nnx.Module, layers: list[KerasLayer], *,
                  source: str) -> dict[tuple[str, ...], np.ndarray]:
  """Variable path -> value, for every variable of `model`, from the Keras `layers`.

  A model without the top accepts a file with it and leaves the top's layers out (Keras itself
  would refuse); anything else that does not fit raises a WeightFileError listing the problems.
  """
  spec = registry.get_spec(arch)
  slots = layer_slots(arch, model)
  unused = {layer.name: layer for layer in layers}
  matched: list[tuple[Slot, KerasLayer]] = []
  missing = []
  for slot in (s for s in slots if s.keras_name is not None):
    if slot.keras_name in unused:
      matched.append((slot, unused.pop(slot.keras_name)))
    else:
      missing.append(slot.keras_name)
  include_top = getattr(model, 'include_top', False)
  dropped_top = [] if include_top else [unused.pop(n).name for n in spec.keras_weights.top_layers
                                        if n in unused]
  # Automatically named layers: the next unused file layer with as many weights, in file order.
  for slot in (s for s in slots if s.keras_name is None):
    candidate = next((layer for layer in unused.values()
                      if len(layer.values) == len(slot.weights)), None)
    if candidate is None:
      missing.append(f'an unnamed {"/".join(slot.path)} layer')
    else:
      matched.append((slot, unused.pop(candidate.name)))

  problems = []
  if missing:
    problems.append(f'{len(missing)} layers of {arch} are not in the file: {_listing(missing)}')
  if unused:
    problems.append(f'{len(unused)} layers of the file have no place in {arch}: '
                    f'{_listing(unused)}')
  values = {}
  for slot, layer in matched:
    if len(layer.values) != len(slot.weights):
      problems.append(f'layer {layer.name} holds {len(layer.values)} weights, {arch} expects '
                      f'{len(slot.weights)} ({", ".join(w[0] for w in slot.weights)})')
      continue
    for (keras_name, var_path, transform), shape, name, value in zip(
        slot.weights, slot.shapes, layer.weight_names, layer.values):
      basename = _weight_basename(name)
      if basename in _KNOWN_KERAS_NAMES and basename not in {keras_name, *_ALSO_ACCEPTED.get(keras_name, ())}:
        problems.append(f'{layer.name}: weight {name} where {keras_name} was expected')
      elif value.shape != shape:
        problems.append(f'{layer.name}/{keras_name}: shape {value.shape} in the file, {shape} '
                        f'in {arch}')
      else:
        values[slot.path + var_path] = value if transform is None else transform(value)
  if problems:
    top = 'with' if include_top else 'without'
    raise WeightFileError(
        f'{source} does not fit {arch} ({top} the ImageNet top):\n  - ' + '\n  - '.join(problems)
        + f'\nGive the Keras {arch} file: {spec.keras_weights.file_name} or '
        f'{spec.keras_weights.notop_file_name}.')
  if dropped_top:
    logging.info('%s: left out the ImageNet top (%s) for the %s backbone.', source,
                 ', '.join(dropped_top), arch)
  return values


def variables_by_path(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
  return {tuple(map(str, p)): v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}


def fill(model: nnx.Module, values: dict[tuple[str, ...], np.ndarray]) -> nnx.Module:
  """Sets every variable of `model` from `values` (path -> array), in place; all must be there."""
  variables = variables_by_path(model)
  missing = sorted('/'.join(p) for p in variables.keys() - values.keys())
  extra = sorted('/'.join(p) for p in values.keys() - variables.keys())
  if missing or extra:
    raise WeightFileError(f'The weights do not cover the model: missing {_listing(missing)}; '
                          f'unexpected {_listing(extra)}.')
  import jax.numpy as jnp
  for path, variable in variables.items():
    value = np.asarray(values[path])
    if value.shape != tuple(variable.shape):
      raise WeightFileError(f'{"/".join(path)}: shape {value.shape}, expected {variable.shape}.')
    variable.set_value(jnp.asarray(value, variable.dtype))
  return model

"""Pairs a Keras weight file's layers with a skinjax model's variables, as Keras' own loader does.

Keras' legacy-h5 loader never matches names: it pairs the file's weighted layers, in the order of
its 'layer_names', one to one with the model's weighted layers in `keras.Model.layers` order, and
checks shapes. The published files need exactly that, since three Keras generations named their
layers differently (Xception's are auto-named 'convolution2d_N', VGG16's weights 'block1_conv1_W_1').
So each model holds Keras' layer order (`keras_layer_order()`, proven against keras.applications
by the tests) and every `Slot` below is one Keras layer in that order. Every shape is checked, and
every weight's role where its name tells it (legacy_names). Names otherwise serve the error
messages only; the v0.2 ResNet50 file, whose order differs from Keras', is put in order by its own.
"""

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
from absl import logging
from flax import nnx

from skinjax.models import efficientnet, registry, resnet
from skinjax.models.layers import SeparableConv
from skinjax.weights import legacy_names
from skinjax.weights.keras_h5 import KerasLayer, WeightFileError

_MAX_PROBLEMS = 8  # listed in an error; a file of another model would give hundreds


def _to_grouped_depthwise(kernel: np.ndarray) -> np.ndarray:
  return kernel.transpose(0, 1, 3, 2)  # Keras (kh, kw, C, 1) -> Flax grouped (kh, kw, 1, C)


# (Keras weight name, variable path within the module, Keras -> Flax transform or None)
WeightMap = tuple[str, tuple[str, ...], Callable | None]
_BATCH_NORM: tuple[WeightMap, ...] = (
    ('gamma', ('scale',), None), ('beta', ('bias',), None),
    ('moving_mean', ('mean',), None), ('moving_variance', ('var',), None))
_NORMALIZATION: tuple[WeightMap, ...] = (
    ('mean', ('mean',), None), ('variance', ('variance',), None), ('count', ('count',), None))
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


# Module path -> Keras 3's layer name, for messages (None: Keras names it automatically).
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

  @property
  def display_name(self) -> str:
    return self.keras_name or f'the unnamed {"/".join(self.path)}'


def layer_slots(arch: str, model: nnx.Module) -> list[Slot]:
  """The model's Keras layers, in Keras' order (`model.keras_layer_order()`)."""
  if not isinstance(registry.get_spec(arch).weights, registry.KerasWeights):
    raise ValueError(f'{arch} has no Keras ImageNet weights; architectures with them: '
                     f'{", ".join(registry.PRETRAINED_ARCHITECTURES)}.')
  naming = _keras_naming(arch)
  modules = {tuple(map(str, path)): m for path, m in nnx.iter_modules(model)}
  slots = []
  for path in model.keras_layer_order():
    module = modules[path]
    weights = _module_weights(module)
    shapes = []
    for _, var_path, transform in weights:
      variable = module
      for part in var_path:
        variable = getattr(variable, part)
      shape = tuple(variable.shape)
      shapes.append(shape if transform is None else (*shape[:2], shape[3], shape[2]))
    slots.append(Slot(naming(path), path, weights, tuple(shapes)))
  return slots


def _listing(names, limit=8) -> str:
  names = list(names)
  shown = ', '.join(names[:limit])
  return shown + (f', ... ({len(names)} in all)' if len(names) > limit else '')


def abstract_model(arch: str, *, include_top: bool, dtype=None) -> nnx.Module:
  """`arch`'s network with shapes and no values: what the weights are paired with.

  A new module each call, which the caller may fill (`fill`); the shapes are traced once per
  process, since tracing a large network is slow (EfficientNetB7: about 10 s on 2 cores).
  """
  graphdef, state = _abstract_parts(arch, include_top, dtype)
  return nnx.merge(graphdef, state, copy=True)


@functools.cache
def _abstract_parts(arch: str, include_top: bool, dtype) -> tuple[nnx.GraphDef, nnx.State]:
  kwargs = {} if dtype is None else {'dtype': dtype}
  return nnx.split(nnx.eval_shape(lambda: registry.build_backbone(
      arch, include_top=include_top, rngs=nnx.Rngs(0), **kwargs)))


@functools.cache
def keras_layer_count(arch: str, *, include_top: bool) -> int:
  """How many weighted layers Keras' `arch` has (how a file with the top is told from one without)."""
  return len(abstract_model(arch, include_top=include_top).keras_layer_order())


def file_has_top(arch: str, layers: list[KerasLayer]) -> bool:
  return len(layers) == keras_layer_count(arch, include_top=True)


def in_keras_order(arch: str, layers: list[KerasLayer]) -> list[KerasLayer]:
  """The file's layers in the order Keras pairs them; only the v0.2 ResNet50 file needs sorting."""
  if arch != 'resnet50' or not legacy_names.is_v02_resnet50([layer.name for layer in layers]):
    return layers
  order = abstract_model(arch, include_top=True).keras_layer_order()
  position = {_resnet_name(path): i for i, path in enumerate(order)}
  return sorted(layers, key=lambda layer: position[legacy_names.v02_resnet50_keras_name(layer.name)])


def _pairing_problems(slot: Slot, layer: KerasLayer, arch: str) -> list[str]:
  where = f'{slot.display_name} (the file\'s {layer.name})'
  if len(layer.values) != len(slot.weights):
    return [f'{where}: {len(layer.values)} weights in the file ({", ".join(layer.weight_names)}), '
            f'{arch} expects {len(slot.weights)} ({", ".join(w[0] for w in slot.weights)})']
  problems = []
  for (keras_name, _, _), shape, name, value in zip(slot.weights, slot.shapes, layer.weight_names,
                                                    layer.values):
    role = legacy_names.weight_role(name)
    if role is not None and role not in {keras_name, *_ALSO_ACCEPTED.get(keras_name, ())}:
      problems.append(f'{where}: weight {name} is a {role} where {keras_name} was expected')
    elif value.shape != shape:
      problems.append(f'{where}/{keras_name}: shape {value.shape} in the file, {shape} in {arch}')
  return problems


def keras_to_flax(arch: str, model: nnx.Module, layers: list[KerasLayer], *,
                  source: str) -> dict[tuple[str, ...], np.ndarray]:
  """Variable path -> value, for every variable of `model`, from the Keras `layers` (file order).

  A model without the top accepts a file with it and leaves the top's layers out (Keras itself
  would refuse); anything else that does not fit raises a WeightFileError listing the problems.
  """
  spec = registry.get_spec(arch)
  slots = layer_slots(arch, model)
  layers = in_keras_order(arch, layers)
  include_top = getattr(model, 'include_top', False)
  dropped_top = []
  if not include_top and len(layers) == len(slots) + len(spec.weights.top_layers):
    layers, dropped_top = layers[:len(slots)], layers[len(slots):]  # Keras lists the top last

  problems = []
  if len(layers) != len(slots):
    expected = (f'{len(slots)}' if include_top else
                f'{len(slots)} without the top, {keras_layer_count(arch, include_top=True)} with it')
    problems.append(f'the file has {len(layers)} layers with weights, {arch} has {expected}')
  values = {}
  for slot, layer in zip(slots, layers):
    pair_problems = _pairing_problems(slot, layer, arch)
    problems += pair_problems
    if not pair_problems:
      for (_, var_path, transform), value in zip(slot.weights, layer.values):
        values[slot.path + var_path] = value if transform is None else transform(value)
  if problems:
    top = 'with' if include_top else 'without'
    shown = problems[:_MAX_PROBLEMS] + (
        [f'... and {len(problems) - _MAX_PROBLEMS} more'] if len(problems) > _MAX_PROBLEMS else [])
    raise WeightFileError(
        f'{source} does not fit {arch} ({top} the ImageNet top), paired layer by layer in Keras\' '
        'order:\n  - ' + '\n  - '.join(shown)
        + f'\nGive the Keras {arch} file: {spec.weights.file_name} or '
        f'{spec.weights.notop_file_name}.')
  if dropped_top:
    logging.info('%s: left out the ImageNet top (%s) for the %s backbone.', source,
                 ', '.join(layer.name for layer in dropped_top), arch)
  return values


def variables_by_path(model: nnx.Module) -> dict[tuple[str, ...], nnx.Variable]:
  return {tuple(map(str, p)): v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Variable)}


def nested(values: dict[tuple[str, ...], object]) -> dict:
  """{('a', 'b'): x} -> {'a': {'b': x}}: the pure-dict form that Orbax and nnx take."""
  tree: dict = {}
  for path, value in values.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def flat(tree: dict, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], np.ndarray]:
  """The inverse of `nested`, with numpy leaves."""
  values = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      values.update(flat(value, prefix + (key,)))
    else:
      values[prefix + (key,)] = np.asarray(value)
  return values


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

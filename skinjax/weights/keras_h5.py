"""Reads Keras weights, from a legacy-h5 file or a live `keras.Model`, as an ordered layer list.

The published ImageNet files are Keras' legacy h5: the root (or its 'model_weights' group, for a
whole saved model) lists 'layer_names' in model order, and each layer's group lists its
'weight_names' in the layer's own order (trainable weights first, e.g. gamma, beta, moving_mean,
moving_variance). Keras loads them by that order; so do we, and we keep the names for checking.
"""

import dataclasses
import pathlib

import numpy as np


class WeightFileError(ValueError):
  """A weight file that cannot be read, or does not fit the architecture it is given for."""


@dataclasses.dataclass
class KerasLayer:
  name: str
  weight_names: list[str]
  values: list[np.ndarray]


def _attribute_list(group, name: str) -> list[str]:
  """Keras splits long attribute lists into 'name0', 'name1', ... (h5 caps an attribute at 64 KB)."""
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f'{name}{i}' in group.attrs:
      chunks.append(group.attrs[f'{name}{i}'])
      i += 1
  return [n.decode('utf8') if isinstance(n, bytes) else str(n)
          for chunk in chunks for n in np.atleast_1d(chunk)]


def read_h5(path: str | pathlib.Path) -> list[KerasLayer]:
  """The layers that hold weights, in the file's order."""
  import h5py  # Only needed for .h5 files.

  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    raise WeightFileError(f'{path} is a folder, not a Keras .h5 weight file; give the file.')
  if not path.is_file():
    raise FileNotFoundError(f'Keras weight file {path} does not exist.')
  try:
    with h5py.File(path, 'r') as f:
      root = f['model_weights'] if 'layer_names' not in f.attrs and 'model_weights' in f else f
      layer_names = _attribute_list(root, 'layer_names')
      if not layer_names:
        raise WeightFileError(
            f'{path} is an HDF5 file but not Keras weights (it has no "layer_names"); give a '
            'keras.applications weight file, e.g. resnet50_weights_tf_dim_ordering_tf_kernels.h5.')
      layers = []
      for name in layer_names:
        group = root[name]
        weight_names = _attribute_list(group, 'weight_names')
        if weight_names:
          layers.append(KerasLayer(name, weight_names, [np.asarray(group[w]) for w in weight_names]))
      return layers
  except WeightFileError:
    raise
  except (OSError, KeyError) as error:
    # h5py raises OSError for truncated or non-HDF5 files, KeyError for a missing dataset.
    raise WeightFileError(
        f'Cannot read the Keras weight file {path} ({error}). It is truncated or not a Keras h5 '
        'file: download it again.') from error


def from_keras_model(model) -> list[KerasLayer]:
  """The same list from a live `keras.Model` (what Keras' legacy-h5 writer would write)."""
  import keras  # Only for converting live models.

  layers = []
  for layer in model.layers:
    weights = layer.trainable_weights + layer.non_trainable_weights
    if weights:
      layers.append(KerasLayer(layer.name, [w.path for w in weights],
                               [np.asarray(keras.ops.convert_to_numpy(w)) for w in weights]))
  return layers

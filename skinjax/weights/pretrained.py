"""Where ImageNet weights come from: the Keras cache, a user's .h5 file, or a ported directory.

`config.model.init` is 'scratch', 'imagenet' (the standard Keras file, looked up in
$SKINJAX_WEIGHTS_DIR, then ~/.keras/models/) or a PATH: an .h5 file or a directory written by
scripts/port_weights.py. Nothing is ever downloaded: there may be no network.
"""

import hashlib
import json
import os
import pathlib

import jax
from absl import logging
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from skinjax.models import registry
from skinjax.weights import keras_h5, lite_pretrained, mapping
from skinjax.weights.keras_h5 import WeightFileError

WEIGHTS_DIR_ENV = 'SKINJAX_WEIGHTS_DIR'
KERAS_CACHE = pathlib.Path('~/.keras/models')
MANIFEST = 'manifest.json'
VARIABLES = 'variables'

Values = dict[tuple[str, ...], np.ndarray]


def search_dirs() -> list[pathlib.Path]:
  dirs = [pathlib.Path(os.environ[WEIGHTS_DIR_ENV])] if os.environ.get(WEIGHTS_DIR_ENV) else []
  return [d.expanduser() for d in dirs + [KERAS_CACHE]]


def find_imagenet_file(arch: str, *, include_top: bool) -> pathlib.Path:
  """The standard Keras file; without the top, the `_notop` file (or, failing that, the full one)."""
  weights = _keras_weights(arch)
  names = [weights.file_name] if include_top else [weights.notop_file_name, weights.file_name]
  for directory in search_dirs():
    for name in names:
      if (directory / name).is_file():
        return directory / name
  wanted = names[0]
  raise FileNotFoundError(
      f'ImageNet weights for {arch} not found: no {wanted} in '
      f'{" or ".join(str(d) for d in search_dirs())}. There is no download at run time; fetch it '
      f'where there is a network (Keras downloads it from {weights.url(include_top)}) and put it '
      f'into ~/.keras/models/ or ${WEIGHTS_DIR_ENV}. Or port it once: python '
      f'scripts/port_weights.py --arch={arch} --keras_h5=/path/to/{wanted} --out=DIR and set '
      f'--config.model.init=DIR.')


def _keras_weights(arch: str) -> registry.KerasWeights:
  weights = registry.get_spec(arch).keras_weights
  if weights is None:
    raise ValueError(f'{arch} has no ImageNet weights; use --config.model.init=scratch or one of '
                     f'{", ".join(registry.PRETRAINED_ARCHITECTURES)}.')
  return weights


def existing_path(init: str, flag: str = 'config.model.init', want_file: bool = False
                  ) -> pathlib.Path:
  """The weight file or ported directory `init` names, refused early and by the user's own flag
  (`flag`: config.model.init, or a script's --keras_h5 / --weights) where it cannot be one."""
  path = pathlib.Path(init).expanduser()
  if want_file:
    if path.is_dir():
      raise WeightFileError(f'{flag}={init!r} is a folder, not a Keras .h5 weight file; give the '
                            '.h5 file itself.')
    if not path.is_file():
      raise FileNotFoundError(f'{flag}={init!r}: no such file. Give a Keras .h5 weight file '
                              '(see --helpfull for where Keras downloads them).')
    return path
  if not path.exists():
    raise FileNotFoundError(
        f'{flag}={init!r}: no such file or directory. Give '
        + ('"scratch", "imagenet", ' if flag == 'config.model.init' else '')
        + 'a Keras .h5 weight file or a directory written by scripts/port_weights.py.')
  if path.is_dir() and not (path / MANIFEST).is_file():
    # A folder is only ever a ported weight directory; say so now, not when the model is built.
    raise WeightFileError(
        f'{flag}={init!r} is a folder but not a ported weight directory (it has no {MANIFEST}); '
        'give a Keras .h5 weight file, or a directory written by scripts/port_weights.py.')
  return path


def abstract_model(arch: str, *, include_top: bool) -> nnx.Module:
  return nnx.eval_shape(lambda: registry.build_backbone(arch, include_top=include_top,
                                                        rngs=nnx.Rngs(0)))


def read_h5(path: pathlib.Path, arch: str) -> list[keras_h5.KerasLayer]:
  try:
    return keras_h5.read_h5(path)
  except WeightFileError as error:
    weights = _keras_weights(arch)
    raise WeightFileError(f'{error} Keras downloads the {arch} weights from '
                          f'{weights.url(False)} (without the top) and {weights.url(True)}.'
                          ) from error


def file_has_top(arch: str, layers: list[keras_h5.KerasLayer]) -> bool:
  # By count, as Keras pairs layers: the top's names differ between Keras generations.
  return mapping.file_has_top(arch, layers)


def md5(path: pathlib.Path) -> str:
  digest = hashlib.md5()  # Keras' own check of its downloads (`file_hash`)
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def published_file(digest: str) -> tuple[str, str] | None:
  """(architecture, what the file is) for a published weight file's md5; None if unknown."""
  for arch in registry.PRETRAINED_ARCHITECTURES:
    weights = registry.get_spec(arch).keras_weights
    releases = [(weights.md5[0], f"Keras' published ImageNet weights for {arch} (top)"),
                (weights.md5[1], f"Keras' published ImageNet weights for {arch} (notop)"),
                *weights.other_releases]
    for known, description in releases:
      if digest == known:
        return arch, description
  return None


def identify(path: pathlib.Path, arch: str) -> str:
  """One line on what the file is; call it once the file is known to fit `arch`."""
  digest = md5(path)
  known = published_file(digest)
  if known is not None and known[0] == arch:
    return f'{known[1]}, md5 {digest}'
  notice = (f'{path.name} is not a file Keras publishes (md5 {digest}), but it fits {arch}: '
            'loaded as such')
  logging.warning(notice)
  return notice


def load(arch: str, init: str, *, include_top: bool) -> tuple[Values, str]:
  """Variable path -> value for `arch` (with or without its top), and where they came from."""
  if lite_pretrained.is_lite(arch) or init.endswith('.pth'):  # EfficientNet-Lite's .pth weights
    return lite_pretrained.load(arch, init, include_top=include_top,
                                abstract_model=abstract_model, load_ported=load_ported)
  _keras_weights(arch)
  path = (find_imagenet_file(arch, include_top=include_top) if init == 'imagenet'
          else existing_path(init))
  if path.is_dir():
    return load_ported(path, arch, include_top=include_top), str(path)
  layers = read_h5(path, arch)
  model = abstract_model(arch, include_top=include_top)
  try:
    if include_top and not file_has_top(arch, layers):
      mapping.keras_to_flax(arch, abstract_model(arch, include_top=False), layers,
                            source=str(path))  # does it fit without the top? Else say why not.
      raise WeightFileError(
          f'{path} has no ImageNet top (a _notop file?); the 1000-class model needs '
          f'{_keras_weights(arch).file_name}.')
    values = mapping.keras_to_flax(arch, model, layers, source=str(path))
  except WeightFileError as error:
    known = published_file(md5(path))
    if known is None or known[0] == arch:
      raise
    raise WeightFileError(f'{error}\n({path.name} is {known[1]}.)') from error
  return values, f'{path} ({identify(path, arch)})'


def load_backbone(arch: str, init: str) -> tuple[Values, str]:
  """What `config.model.init` gives the trainer: the backbone's variables, without the top."""
  return load(arch, init, include_top=False)


def _nested(values: Values) -> dict:
  tree: dict = {}
  for path, value in values.items():
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = value
  return tree


def _flat(tree: dict, prefix=()) -> Values:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, prefix + (key,)))
    else:
      flat[prefix + (key,)] = np.asarray(value)
  return flat


def sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def save_ported(out: pathlib.Path, arch: str, keras_file: pathlib.Path) -> dict:
  """Ports `keras_file` (with its top if it has one) into `out`: an Orbax checkpoint + manifest."""
  out = pathlib.Path(out).expanduser()
  if out.exists() and any(out.iterdir()):
    raise FileExistsError(f'{out} exists and is not empty; choose another --out or delete it.')
  keras_file = pathlib.Path(keras_file)
  layers = read_h5(keras_file, arch)
  include_top = file_has_top(arch, layers)
  values = mapping.keras_to_flax(arch, abstract_model(arch, include_top=include_top), layers,
                                 source=str(keras_file))
  manifest = {
      'arch': arch,
      'include_top': include_top,
      'source_file': keras_file.name,
      'source': identify(keras_file, arch),
      'source_sha256': sha256(keras_file),
      'num_params': int(sum(v.size for v in values.values())),
  }
  out.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save((out / VARIABLES).absolute(), _nested(values))
  # Written last: a directory without a manifest is an interrupted port, never a valid one.
  (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')
  return manifest


def load_ported(directory: pathlib.Path, arch: str, *, include_top: bool) -> Values:
  manifest_path = directory / MANIFEST
  if not manifest_path.is_file():
    raise WeightFileError(
        f'{directory} is not a ported weight directory (no {MANIFEST}; an interrupted port?). '
        f'Write one with: python scripts/port_weights.py --arch={arch} --keras_h5=FILE '
        f'--out={directory}')
  manifest = json.loads(manifest_path.read_text())
  if manifest['arch'] != arch:
    raise WeightFileError(f'{directory} holds {manifest["arch"]} weights, not {arch}; port the '
                          f'{arch} file or change config.model.arch.')
  if include_top and not manifest['include_top']:
    raise WeightFileError(f'{directory} was ported from a file without the ImageNet top; the '
                          f'1000-class model needs {_keras_weights(arch).file_name}.')
  stored = abstract_model(arch, include_top=manifest['include_top'])
  target = _nested({path: jax.ShapeDtypeStruct(v.shape, v.dtype)
                    for path, v in mapping.variables_by_path(stored).items()})
  with ocp.StandardCheckpointer() as checkpointer:
    values = _flat(checkpointer.restore((directory / VARIABLES).absolute(), target))
  wanted = mapping.variables_by_path(abstract_model(arch, include_top=include_top))
  return {path: value for path, value in values.items() if path in wanted}


def load_model(arch: str, init: str, *, include_top: bool, dtype=None) -> nnx.Module:
  """The bare network with the weights of `init` (an .h5 file, a ported directory or 'imagenet')."""
  values, _ = load(arch, init, include_top=include_top)
  return model_with(arch, values, include_top=include_top, dtype=dtype)


def model_with(arch: str, values: Values, *, include_top: bool, dtype=None) -> nnx.Module:
  """The bare network holding `values` (from `load`)."""
  kwargs = {} if dtype is None else {'dtype': dtype}
  model = nnx.eval_shape(lambda: registry.build_backbone(
      arch, include_top=include_top, rngs=nnx.Rngs(0), **kwargs))
  return mapping.fill(model, values)


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
  nnx.replace_by_pure_dict(state, _nested(replacements))
  return {path[1:] for path in replacements}


def model_from_keras(arch: str, keras_model) -> nnx.Module:
  """The skinjax network with the weights of a live `keras.Model` of the same architecture.

  With the top when the Keras model has it. This is what an h5 port gives, without the file.
  """
  layers = keras_h5.from_keras_model(keras_model)
  model = abstract_model(arch, include_top=file_has_top(arch, layers))
  values = mapping.keras_to_flax(arch, model, layers, source=f'keras.Model {keras_model.name!r}')
  return mapping.fill(model, values)

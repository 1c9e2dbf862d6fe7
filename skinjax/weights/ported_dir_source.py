"""A directory written by scripts/port_weights.py: the Flax variables as an Orbax checkpoint, and a
manifest (architecture, top or not, the source file and what it is) written last, so that a
directory without one is an interrupted port, never a valid one.

Only ever a path the user gives: `sources.user_path` locates it for the file sources.
"""

import json
import pathlib

import jax
import orbax.checkpoint as ocp

from skinjax.weights import identity, mapping, sources
from skinjax.weights.keras_h5 import WeightFileError
from skinjax.weights.sources import MANIFEST

VARIABLES = 'variables'


class PortedDirSource(sources.WeightSource):

  def identify(self, path: pathlib.Path) -> str:
    return self._manifest(path)['source']  # what the ported file was, recorded at the port

  def describe(self, path: pathlib.Path) -> str:
    return str(path)  # the path alone, as runs have always recorded it

  def read(self, path: pathlib.Path, *, include_top: bool) -> sources.Values:
    manifest = self._manifest(path)
    if include_top and not manifest['include_top']:
      raise WeightFileError(f'{path} was ported from a file without the ImageNet top; the '
                            f'1000-class model needs {self.weights.file_name}.')
    stored = mapping.abstract_model(self.arch, include_top=manifest['include_top'])
    target = mapping.nested({name: jax.ShapeDtypeStruct(v.shape, v.dtype)
                             for name, v in mapping.variables_by_path(stored).items()})
    with ocp.StandardCheckpointer() as checkpointer:
      values = mapping.flat(checkpointer.restore((path / VARIABLES).absolute(), target))
    wanted = mapping.variables_by_path(mapping.abstract_model(self.arch, include_top=include_top))
    return {name: value for name, value in values.items() if name in wanted}

  def _manifest(self, directory: pathlib.Path) -> dict:
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
      raise WeightFileError(
          f'{directory} is not a ported weight directory (no {MANIFEST}; an interrupted port?). '
          f'Write one with: python scripts/port_weights.py --arch={self.arch} --keras_h5=FILE '
          f'--out={directory}')
    manifest = json.loads(manifest_path.read_text())
    if manifest['arch'] != self.arch:
      raise WeightFileError(f'{directory} holds {manifest["arch"]} weights, not {self.arch}; port '
                            f'the {self.arch} file or change config.model.arch.')
    return manifest

  @staticmethod
  def new_directory(out: pathlib.Path) -> pathlib.Path:
    """`out`, refused before a port's long read where it holds something already."""
    out = pathlib.Path(out).expanduser()
    if out.exists() and any(out.iterdir()):
      raise FileExistsError(f'{out} exists and is not empty; choose another --out or delete it.')
    return out

  def write(self, out: pathlib.Path, values: sources.Values, *, include_top: bool,
            source_file: pathlib.Path, source: str) -> dict:
    """Saves `values` (from `source_file`, which `source` identifies) into `new_directory(out)`."""
    manifest = {
        'arch': self.arch,
        'include_top': include_top,
        'source_file': source_file.name,
        'source': source,
        'source_sha256': identity.file_digest(source_file, 'sha256'),
        'num_params': int(sum(v.size for v in values.values())),
    }
    out.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save((out / VARIABLES).absolute(), mapping.nested(values))
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n')  # last: see above
    return manifest

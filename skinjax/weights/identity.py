"""What a weight file is, told by its md5 against the published files the registry knows.

Keras checks each download against its md5 (`get_file(file_hash=)`); the same digests name a
file here, whatever its format: a published file loads with its name in the log, an unknown one
that fits loads with a warning, and one that does not fit says which published file it is.
"""

import contextlib
import hashlib
import pathlib

from absl import logging

from skinjax.models import registry
from skinjax.weights.keras_h5 import WeightFileError


def file_digest(path: pathlib.Path, algorithm: str) -> str:
  digest = hashlib.new(algorithm)
  with open(path, 'rb') as f:  # in blocks: EfficientNetB7's file is 258 MB
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def md5(path: pathlib.Path) -> str:
  return file_digest(path, 'md5')


def published_file(digest: str) -> tuple[str, str] | None:
  """(architecture, what the file is) for a published weight file's md5; None if unknown."""
  for arch in registry.ARCHITECTURES:
    weights = registry.get_spec(arch).weights
    for known, description in weights.releases(arch) if weights else ():
      if digest == known:
        return arch, description
  return None


def identify(path: pathlib.Path, arch: str) -> str:
  """One line on what the file is; call it once the file is known to fit `arch`."""
  digest = md5(path)
  known = published_file(digest)
  if known is not None and known[0] == arch:
    return f'{known[1]}, md5 {digest}'
  notice = (f'{path.name} is not {registry.get_spec(arch).weights.published_as} (md5 {digest}), '
            f'but it fits {arch}: loaded as such')
  logging.warning(notice)
  return notice


@contextlib.contextmanager
def naming_another_models_file(path: pathlib.Path, arch: str):
  """A file that does not fit `arch` but is another model's published file says which it is."""
  try:
    yield
  except WeightFileError as error:
    known = published_file(md5(path))
    if known is None or known[0] == arch:
      raise
    raise WeightFileError(f'{error}\n({path.name} is {known[1]}.)') from error

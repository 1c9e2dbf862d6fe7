"""JAX's persistent compilation cache, on by default, so that a second start does not recompile.

A resumed run, an evaluation of a checkpoint or a rerun of a config compiles the same programs as
the run before it; with the cache they are read back from disk instead (scripts/benchmark_train.py
reports the compile time either way). Compilations under a second are not cached (JAX's default
threshold), so the cache holds the train/eval steps rather than every small helper.

$SKINJAX_COMPILATION_CACHE picks the folder (default ~/.cache/skinjax/jax-compilation); set it to
'off' to compile everything afresh.
"""

import os
import pathlib

import jax

ENV_VAR = 'SKINJAX_COMPILATION_CACHE'
DEFAULT_DIR = pathlib.Path('~/.cache/skinjax/jax-compilation')


def cache_dir() -> pathlib.Path | None:
  """The cache folder this process should use, or None when the user switched the cache off."""
  value = os.environ.get(ENV_VAR, '').strip()
  if value.lower() in ('off', '0', 'false', 'none'):
    return None
  return pathlib.Path(value or DEFAULT_DIR).expanduser()


def enable() -> pathlib.Path | None:
  """Points JAX at the cache folder (unless switched off or already set by the user)."""
  if jax.config.jax_compilation_cache_dir:  # e.g. JAX_COMPILATION_CACHE_DIR: the user's choice wins
    return pathlib.Path(jax.config.jax_compilation_cache_dir)
  directory = cache_dir()
  if directory is None:
    return None
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    return None  # a read-only home must not stop training; it only costs the compile time
  jax.config.update('jax_compilation_cache_dir', str(directory))
  return directory

"""Builds the native CPU kernels' library (oneDNN convolutions, BatchNorm's sums) on first use, and
loads it.

Built at first use rather than at install: an editable install (`pip install -e .`, what the
Makefile does) runs no build step of ours, and the library must match the jaxlib and oneDNN found
at run time, which a later `pip install -U jax` would change under an install-time build. The
compiled file is cached like JAX's compilation cache, keyed by the sources, the build flags,
jaxlib's version, the oneDNN version and the compiler, so only the first start after a change
pays the ~5 s of g++. The cache is per user and serves every environment: the build names no
folder to find oneDNN in (no rpath), and each process loads its own environment's oneDNN first,
so deleting the environment that made a build breaks no other.

oneDNN comes from the package index (`onednn-cpu-gomp`, `onednn-devel-cpu-gomp`: oneDNN 3.2 built
against the system's libgomp only; Linux x86_64). Anything missing (the packages, a C++ compiler,
the library's import) is an `Unavailable` whose message says what and how to fix it; the caller
then keeps the pure-JAX path.
"""

import ctypes
import fcntl
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax
import jaxlib

# The convolutions, BatchNorm's sums and max-pooling, which share the convolutions' OpenMP lock.
SOURCES = tuple(pathlib.Path(__file__).with_name(name)
                for name in ('onednn_conv.cc', 'batch_norm.cc', 'max_pool.cc'))
CACHE_ENV_VAR = 'SKINJAX_KERNEL_CACHE'
DEFAULT_CACHE = pathlib.Path('~/.cache/skinjax/kernels')
LIBRARY_NAME = 'libskinjax_onednn.so'
RUNTIME_PACKAGE, HEADERS_PACKAGE = 'onednn-cpu-gomp', 'onednn-devel-cpu-gomp'
INSTALL_HINT = f"pip install '{RUNTIME_PACKAGE}==2023.2.0' '{HEADERS_PACKAGE}==2023.2.0'"


class Unavailable(Exception):
  """The native kernels cannot be used here; the message says why and what would fix it."""


def _package_file(package: str, name: str) -> pathlib.Path:
  """The installed file of `package` whose path ends with `name` (the wheels put them outside
  site-packages: <prefix>/lib/libdnnl.so, <prefix>/include/oneapi/dnnl/dnnl.hpp)."""
  try:
    files = importlib.metadata.distribution(package).files or ()
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f'{package} is not installed ({INSTALL_HINT})') from None
  for file in files:
    if file.as_posix().endswith(name):
      return pathlib.Path(file.locate()).resolve()
  raise Unavailable(f'{package} has no {name}; reinstall it ({INSTALL_HINT})')


def _compiler() -> str:
  compiler = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not compiler:
    raise Unavailable('no C++ compiler (g++ or $CXX) to build them')
  return compiler


def _compiler_version(compiler: str) -> str:
  return subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout


def _cache_root() -> pathlib.Path:
  return pathlib.Path(os.environ.get(CACHE_ENV_VAR) or DEFAULT_CACHE).expanduser()


# -fopenmp: the depthwise kernel gradient's own loop runs on oneDNN's OpenMP runtime (libgomp).
# -ffp-contract=off: no fused multiply-adds in our own loops, so that their sums round alike on
# every instruction set the target_clones pick (AVX-512, AVX2, the rest).
FLAGS = ('-O2', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-w', '-ffp-contract=off')


def _key(compiler: str, onednn_version: str) -> str:
  digest = hashlib.sha256()
  for source in SOURCES:
    digest.update(source.read_bytes())
  for part in (' '.join(FLAGS), jaxlib.__version__, onednn_version, _compiler_version(compiler)):
    digest.update(part.encode())
  return digest.hexdigest()[:16]


def _compile(compiler: str, library_dir: pathlib.Path, include_dir: pathlib.Path,
             output: pathlib.Path):
  command = [compiler, *FLAGS, f'-I{include_dir}', f'-I{jax.ffi.include_dir()}',
             *map(str, SOURCES), '-o', str(output), f'-L{library_dir}', '-ldnnl']
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode:
    first_error = next((line for line in result.stderr.splitlines() if 'error' in line),
                       result.stderr.strip()[:300])
    raise Unavailable(f'building {", ".join(s.name for s in SOURCES)} failed: {first_error}')


def _build_once(compiler: str, library_dir: pathlib.Path, include_dir: pathlib.Path,
                target: pathlib.Path):
  """Builds into a staging folder and renames into place: no half-written library is ever seen,
  and two processes starting at once (test workers, hosts sharing a home) build it once."""
  target.parent.mkdir(parents=True, exist_ok=True)
  with open(target.parent / '.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not target.exists():
      with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        built = pathlib.Path(staging) / LIBRARY_NAME
        _compile(compiler, library_dir, include_dir, built)
        built.rename(target)


@functools.cache
def library() -> ctypes.CDLL:
  """The built library, loaded (built first if this source, jaxlib and oneDNN have no build)."""
  if platform.system() != 'Linux' or platform.machine() not in ('x86_64', 'AMD64'):
    raise Unavailable(f'the oneDNN packages exist for Linux x86_64 only, not '
                      f'{platform.system()} {platform.machine()}')
  runtime = _package_file(RUNTIME_PACKAGE, '/libdnnl.so')
  include_dir = _package_file(HEADERS_PACKAGE, '/oneapi/dnnl/dnnl.hpp').parents[2]
  compiler = _compiler()
  version = importlib.metadata.version(RUNTIME_PACKAGE)
  folder = _cache_root() / _key(compiler, version)
  target = folder / LIBRARY_NAME
  if not target.exists():
    try:
      _build_once(compiler, runtime.parent, include_dir, target)
    except OSError as error:  # e.g. a read-only home
      raise Unavailable(f'cannot write the build to {folder} ({error.strerror}); point '
                        f'${CACHE_ENV_VAR} at a writable folder') from None
  try:
    # This environment's oneDNN first, globally: the build's dependency on libdnnl.so.3 then
    # resolves to it, whichever environment compiled the build.
    ctypes.CDLL(str(runtime), mode=ctypes.RTLD_GLOBAL)
    return ctypes.CDLL(str(target))
  except OSError as error:
    raise Unavailable(f'loading {target} failed: {error}') from None


@functools.cache
def register(targets: tuple[tuple[str, str], ...]) -> None:
  """Registers the library's FFI handlers with XLA for the CPU, once: (target name, symbol)."""
  loaded = library()
  for name, symbol in targets:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(loaded, symbol)), platform='cpu')

"""Reads a PyTorch `.pth` state dict into numpy arrays, without torch.

A .pth file is a pickle, and unpickling runs whatever callables the file names: a malicious file
could name `os.system`. So the unpickler here resolves only the few globals a state dict needs
(an OrderedDict, torch's tensor-rebuild functions and storage types), each to a harmless stand-in,
and refuses anything else with a WeightFileError.

Two layouts, both as `torch.save` writes them (torch/serialization.py):
- legacy (torch < 1.6, and `_use_new_zipfile_serialization=False`): five pickles in a row (magic
  number, protocol version, sys_info, the object itself, the list of storage keys), then each
  storage's raw bytes in that order: an int64 element count, then the elements (little-endian);
- zip (the default since torch 1.6): `<name>/data.pkl` holds the object, `<name>/data/<key>` each
  storage's raw bytes.
In both, a tensor is pickled as `_rebuild_tensor_v2(storage, offset, size, stride, ...)` whose
storage is a persistent id ('storage', StorageType, key, location, numel), read after the object.
"""

import collections
import dataclasses
import io
import pathlib
import pickle
import zipfile

import numpy as np

from skinjax.weights.keras_h5 import WeightFileError

LEGACY_MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
LEGACY_PROTOCOL_VERSION = 1001

# torch's storage type names -> the numpy dtype of their elements.
STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: type


@dataclasses.dataclass(frozen=True)
class _StorageRef:
  """A persistent id: the storage `key`, whose bytes come after the pickled object.

  Old torch versions also pickled views of a storage: `offset` elements into storage `key`.
  """
  key: str
  dtype: type
  offset: int = 0


@dataclasses.dataclass(frozen=True)
class _PendingTensor:
  """A tensor whose storage has not been read yet: a strided view, materialised later."""
  storage: _StorageRef
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def materialise(self, storages: dict[str, np.ndarray]) -> np.ndarray:
    data = storages[self.storage.key]
    offset = self.storage.offset + self.offset
    if not self.shape:
      return np.array(data[offset])
    needed = offset + 1 + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
    if min(self.shape) > 0 and needed > data.size:
      raise WeightFileError(f'a tensor of shape {self.shape} reaches past the end of its storage '
                            f'({needed} > {data.size} elements): the file is corrupt.')
    itemsize = data.itemsize
    view = np.lib.stride_tricks.as_strided(
        data[offset:], self.shape, tuple(s * itemsize for s in self.stride), writeable=False)
    return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor(_v2): (storage, offset, size, stride[, requires_grad, hooks...])."""
  if not isinstance(storage, _StorageRef):
    raise WeightFileError('a tensor in the file is not backed by a storage; not a state dict.')
  return _PendingTensor(storage, int(storage_offset), tuple(size), tuple(stride))


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    **{('torch', name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _StateDictUnpickler(pickle.Unpickler):

  def find_class(self, module, name):
    try:
      return _ALLOWED_GLOBALS[(module, name)]
    except KeyError:
      raise WeightFileError(
          f'refusing to load {module}.{name}: a weight file may only hold tensors in an ordered '
          'dict, and unpickling anything else could run code.') from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType)):
      raise WeightFileError(f'unexpected persistent id {str(pid)[:80]}: not a torch storage.')
    view = pid[5] if len(pid) > 5 else None  # legacy only: (view key, offset, size)
    return _StorageRef(str(pid[2]), pid[1].dtype, int(view[1]) if view else 0)


def _unpickle(data: bytes | io.BytesIO):
  stream = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
  return _StateDictUnpickler(stream).load()


def _storage_refs(obj, refs: dict[str, _StorageRef]):
  if isinstance(obj, _PendingTensor):
    refs[obj.storage.key] = obj.storage
  elif isinstance(obj, dict):
    for value in obj.values():
      _storage_refs(value, refs)
  return refs


def _materialised(obj, storages):
  if isinstance(obj, _PendingTensor):
    return obj.materialise(storages)
  if isinstance(obj, dict):
    return collections.OrderedDict((k, _materialised(v, storages)) for k, v in obj.items())
  return obj


def _load_legacy(stream: io.BytesIO):
  if _unpickle(stream) != LEGACY_MAGIC_NUMBER:
    raise WeightFileError('not a torch file (wrong magic number).')
  if _unpickle(stream) != LEGACY_PROTOCOL_VERSION:
    raise WeightFileError('unsupported legacy torch protocol version.')
  sys_info = _unpickle(stream)
  if not sys_info.get('little_endian', True):
    raise WeightFileError('the file was written on a big-endian machine; not supported.')
  obj = _unpickle(stream)
  keys = _unpickle(stream)
  refs = _storage_refs(obj, {})
  storages = {}
  for key in keys:
    # Each storage is written in full (an int64 element count, then the elements), also where
    # the tensors use only part of it.
    dtype = np.dtype(refs[key].dtype).newbyteorder('<')
    count = int(np.frombuffer(stream.read(8), '<i8')[0])
    raw = stream.read(count * dtype.itemsize)
    if len(raw) != count * dtype.itemsize:
      raise WeightFileError('the file ends inside a tensor: it is truncated.')
    storages[key] = np.frombuffer(raw, dtype)
  return obj, storages


def _load_zip(archive: zipfile.ZipFile):
  pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
  if len(pickles) != 1:
    raise WeightFileError('a zip file, but not one torch.save wrote (no <name>/data.pkl).')
  root = pickles[0][:-len('data.pkl')]
  obj = _unpickle(archive.read(pickles[0]))
  byteorder = root + 'byteorder'
  if byteorder in archive.namelist() and archive.read(byteorder) != b'little':
    raise WeightFileError('the file was written on a big-endian machine; not supported.')
  storages = {}
  for key, ref in _storage_refs(obj, {}).items():
    storages[key] = np.frombuffer(archive.read(f'{root}data/{key}'),
                                  np.dtype(ref.dtype).newbyteorder('<'))
  return obj, storages


def read_state_dict(path: str | pathlib.Path) -> collections.OrderedDict[str, np.ndarray]:
  """The state dict (name -> array, in the file's order) of a torch.save'd .pth file."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    raise ValueError(f'{path} is a folder, not a PyTorch .pth weight file; give the file.')
  if not path.is_file():
    raise FileNotFoundError(f'PyTorch weight file {path} does not exist.')
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as archive:
        obj, storages = _load_zip(archive)
    else:
      obj, storages = _load_legacy(io.BytesIO(path.read_bytes()))
    state_dict = _materialised(obj, storages)
  except WeightFileError as error:
    raise WeightFileError(f'{path}: {error}') from None
  except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError,
          AttributeError, zipfile.BadZipFile) as error:
    raise WeightFileError(f'{path}: not a readable PyTorch state dict ({type(error).__name__}: '
                          f'{error}); truncated or not a .pth file?') from None
  if not isinstance(state_dict, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state_dict.items()):
    raise WeightFileError(f'{path}: holds no state dict (name -> tensor); a whole pickled model '
                          'or a training checkpoint is not supported.')
  return state_dict

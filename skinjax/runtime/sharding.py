"""Data parallelism over a one-axis mesh: batches split along 'data', state replicated.

Under jit the batch is one global array, so BatchNorm statistics are global without any
axis_name, and one device or many compute the same function.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def data_mesh(devices=None) -> Mesh:
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = 'config.train.batch_size'):
  devices, processes = mesh.devices.size, jax.process_count()
  if global_batch_size % devices or global_batch_size % processes:
    raise ValueError(f'{what}={global_batch_size} must be divisible by the {devices} devices '
                     f'(and {processes} processes) the batch is split over.')


def global_batch(process_batch: dict, sharding: NamedSharding) -> dict:
  """Assembles each process's slice into global arrays sharded along 'data'."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), process_batch)

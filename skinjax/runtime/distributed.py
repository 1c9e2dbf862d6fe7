"""Joining JAX's own distributed runtime: explicit flags, or the launcher's settings."""

import os

import jax


def launched_as_many_processes() -> bool:
  """True under a launcher whose settings jax.distributed.initialize() reads by itself.

  A single-task SLURM job or a plain `python` on one machine stays one process: initialising the
  distributed runtime there would wait for a coordinator that never comes.
  """
  def count(name):
    try:
      return int(os.environ.get(name, '1').split('(')[0])  # SLURM writes e.g. '4(x2)'
    except ValueError:
      return 1
  return (('SLURM_JOB_ID' in os.environ and count('SLURM_NTASKS') > 1)
          or count('OMPI_COMM_WORLD_SIZE') > 1
          or len(os.environ.get('TPU_WORKER_HOSTNAMES', '').split(',')) > 1)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, force: bool = False) -> None:
  """jax.distributed.initialize() when flags, `force` or the launcher ask for many processes."""
  if not (force or coordinator_address or launched_as_many_processes()):
    return
  # CPU hosts need an explicit cross-process collectives backend; GPUs and TPUs ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)

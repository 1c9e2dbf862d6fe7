"""Entry point: python -m skinjax.main --config=configs/demo.py --workdir=runs/demo"""

import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from skinjax.runtime import cli_flags
from skinjax.runtime import compilation_cache
from skinjax.runtime import distributed
from skinjax.runtime import preemption
from skinjax.training import train

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and the report.')
config_flags.DEFINE_config_file('config', None, 'A config file from configs/.', lock_config=True)
flags.DEFINE_bool('multihost', False,
                  'Force jax.distributed.initialize() with auto-detected settings. Not needed under '
                  'SLURM or Open MPI with more than one task, nor on multi-host TPU slices: those '
                  'are detected.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, for explicit multi-host.')
flags.DEFINE_integer('num_processes', None, 'Number of processes, for explicit multi-host.')
flags.DEFINE_integer('process_id', None, 'This process index, for explicit multi-host.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every save at INFO
  # grain's worker batches still in flight when training ends live in shared memory, which
  # Python's resource tracker (a process of its own, started with this interpreter's -W options)
  # unlinks at exit, with a warning per run that the user can do nothing about.
  sys.warnoptions.append('ignore:resource_tracker:UserWarning')
  distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                         force=FLAGS.multihost)
  compilation_cache.enable()
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except preemption.RunStopped as stopped:
    raise SystemExit(str(stopped)) from None
  except KeyboardInterrupt:  # a second Ctrl-C: no time to save
    raise SystemExit('Interrupted without saving. Run the same command again to continue from '
                     'the last checkpoint.') from None
  except (ValueError, OSError, FloatingPointError) as error:
    # Bad input or a full disk: say what is wrong and how to fix it; the traceback only with
    # --verbosity=1.
    logging.vlog(1, 'Traceback of the error below:', exc_info=True)
    raise SystemExit(f'error: {error}') from None


if __name__ == '__main__':
  # An unknown config key or a wrong type fails while flags are parsed, before main: one line.
  app.run(main, flags_parser=cli_flags.parse_flags)

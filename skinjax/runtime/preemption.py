"""Stopping a run cleanly when a scheduler or the user asks: SIGTERM and SIGINT (Ctrl-C).

SLURM, preemptible VMs and Kubernetes send SIGTERM some seconds before they kill a process. The
trainer finishes the step it is in, saves `latest` (with the data iterator), and exits; the same
command resumes it exactly.
"""

import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class RunStopped(Exception):
  """Raised after the checkpoint of a requested stop is saved."""

  def __init__(self, step: int, workdir):
    super().__init__(f'Stopped at step {step}, saved to {workdir}. Run the same command again '
                     'to continue.')
    self.step = step


class StopSignals:
  """While active, SIGTERM and SIGINT ask the training loop to stop after its current step.

  One process: a Python handler sets a flag. Several processes must all stop at the same step, to
  write one consistent checkpoint: JAX's preemption sync service picks that step (its notifier
  catches SIGTERM by itself, on whichever process gets it), and SIGINT is handed to it as a
  SIGTERM. A second Ctrl-C ends the process at once, without saving, as its user means.
  """

  def __init__(self):
    self.requested_by = None  # the signal's name, once one came to this process
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # Python delivers signals to the main thread only; leave the defaults
    ours = (signal.SIGINT,) if _many_processes() else (signal.SIGINT, signal.SIGTERM)
    for signum in ours:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if self.requested_by is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.requested_by = signal.Signals(signum).name
    print(f'\n{self.requested_by}: stopping after this step and saving the run '
          '(Ctrl-C again quits without saving).', flush=True)
    if _many_processes():
      os.kill(os.getpid(), signal.SIGTERM)

  def at_step(self, step: int) -> bool:
    """Whether to stop after `step`. Every process calls it after every train step."""
    if _many_processes():
      return multihost_utils.reached_preemption_sync_point(step)
    return self.requested_by is not None

  def between_steps(self) -> bool:
    """Whether a stop was asked outside the steps (validation, checkpoints); one process only.

    Several processes only stop at a step that the sync service agreed on.
    """
    return not _many_processes() and self.requested_by is not None


def _many_processes() -> bool:
  return jax.process_count() > 1

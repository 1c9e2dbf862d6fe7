"""A one-line progress bar (step, loss, img/s, ETA) that degrades to log lines off a terminal."""

import sys
import time


class ProgressBar:
  """Its img/s counts training time only: the trainer pauses the clock around validation and
  checkpoints (as big_vision's chrono does), which would otherwise depress the next rate.

  The clock runs from construction, and rates are measured from `start_step` (where a start or a
  resume begins), so the first update has a rate too.
  """

  def __init__(self, total_steps: int, batch_size: int, stream=sys.stderr, *, start_step: int = 0):
    self.total_steps, self.batch_size, self.stream = total_steps, batch_size, stream
    self.interactive = stream.isatty()
    self._stopped_s = 0.0  # time the clock spent paused
    self._paused_at = None
    self._last_time, self._last_step = self._clock(), start_step

  def _clock(self) -> float:
    """Seconds of running time (from an arbitrary origin), the pauses left out."""
    now = time.monotonic() if self._paused_at is None else self._paused_at
    return now - self._stopped_s

  def pause(self):
    if self._paused_at is None:
      self._paused_at = time.monotonic()

  def resume(self):
    if self._paused_at is not None:
      self._stopped_s += time.monotonic() - self._paused_at
      self._paused_at = None

  def update(self, step: int, epoch: int, loss: float) -> float:
    """Draws the bar and returns the images/s of training since the previous update."""
    now = self._clock()
    rate = 0.0
    if step > self._last_step:
      rate = (step - self._last_step) * self.batch_size / max(now - self._last_time, 1e-9)
    self._last_time, self._last_step = now, step
    eta = (self.total_steps - step) * self.batch_size / rate if rate else float('nan')
    done = int(30 * step / max(self.total_steps, 1))
    line = (f'[{"#" * done}{"." * (30 - done)}] step {step}/{self.total_steps} epoch {epoch} '
            f'loss {loss:.4f} {rate:.1f} img/s ETA {_duration(eta)}')
    if self.interactive:
      self.stream.write('\r' + line + '\x1b[K')
    else:
      self.stream.write(line + '\n')
    self.stream.flush()
    return rate

  def newline(self):
    if self.interactive:
      self.stream.write('\n')
      self.stream.flush()


def _duration(seconds: float) -> str:
  if seconds != seconds:  # NaN before the first rate is known
    return '--:--'
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return f'{hours:d}:{minutes:02d}:{seconds:02d}' if hours else f'{minutes:02d}:{seconds:02d}'

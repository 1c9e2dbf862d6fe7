"""A one-line progress bar (step, loss, img/s, ETA) that degrades to log lines off a terminal."""

import sys
import time


class ProgressBar:

  def __init__(self, total_steps: int, batch_size: int, stream=sys.stderr):
    self.total_steps, self.batch_size, self.stream = total_steps, batch_size, stream
    self.interactive = stream.isatty()
    self._last_time, self._last_step = time.monotonic(), None

  def update(self, step: int, epoch: int, loss: float) -> float:
    """Draws the bar and returns the images/s since the previous update."""
    now = time.monotonic()
    rate = 0.0
    if self._last_step is not None and step > self._last_step:
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

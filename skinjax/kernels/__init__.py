"""Native CPU kernels called from jitted code through jax.ffi: oneDNN convolutions, BatchNorm's
per-feature sums in training (skinjax/kernels/batch_norm.cc) and max-pooling
(skinjax/kernels/max_pool.cc), one library.

$SKINJAX_CPU_KERNELS picks them (all, or none):
- unset or `auto`: oneDNN where it can be built and loaded, else XLA's path, with one line why;
- `onednn`: oneDNN, or a `KernelChoiceError` saying what is missing;
- `xla`: the pure-JAX path (skinjax.models.cpu_conv), as before the kernels existed.
GPUs and TPUs never use these: cpu_conv only asks on the CPU backend.
"""

import contextlib
import functools
import os

from absl import logging

ENV_VAR = 'SKINJAX_CPU_KERNELS'
CHOICES = ('auto', 'onednn', 'xla')


class KernelChoiceError(ValueError):
  """$SKINJAX_CPU_KERNELS asks for what cannot be had; one line says what and how to fix it.

  A ValueError, so that the commands report it as the bad input it is: one `error:` line."""


def choice() -> str:
  value = os.environ.get(ENV_VAR, '').strip().lower() or 'auto'
  if value not in CHOICES:
    raise KernelChoiceError(f'{ENV_VAR}={value!r} is not one of {", ".join(CHOICES)}; unset it '
                            'to use oneDNN where it is available.')
  return value


@functools.cache
def onednn_enabled() -> bool:
  """Whether CPU convolutions go to oneDNN in this process (decided once, at the first conv)."""
  wanted = choice()
  if wanted == 'xla':
    return False
  # g++ and ctypes only when asked.
  from skinjax.kernels import batch_norm, build, conv, max_pool  # noqa: PLC0415
  try:
    build.register(conv.TARGETS + batch_norm.TARGETS + max_pool.TARGETS)
  except build.Unavailable as why:
    if wanted == 'onednn':
      raise KernelChoiceError(f'{ENV_VAR}=onednn, but the oneDNN kernels are unavailable: {why}; '
                              f'or set {ENV_VAR}=xla.') from None
    logging.warning('CPU convolutions use XLA\'s slower path: the oneDNN kernels are unavailable '
                    '(%s). Set %s=xla to silence this.', why, ENV_VAR)
    return False
  return True


@contextlib.contextmanager
def forced(value: str):
  """Traces the code inside with $SKINJAX_CPU_KERNELS=value, then restores the process's choice.

  For measurements only: scripts/benchmark_train.py counts a step's FLOPs on the pure-JAX path,
  whose convolutions XLA's cost analysis can count (it counts none in a custom call).
  """
  before = os.environ.get(ENV_VAR)
  os.environ[ENV_VAR] = value
  onednn_enabled.cache_clear()
  try:
    yield
  finally:
    if before is None:
      del os.environ[ENV_VAR]
    else:
      os.environ[ENV_VAR] = before
    onednn_enabled.cache_clear()

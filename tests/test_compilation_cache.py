"""The persistent compilation cache: on by default, so a second start reads programs back."""

import os
import subprocess
import sys

from tests.helpers import REPO

# Compiles one program (no minimum compile time, so a small one counts) and prints how many
# compilations JAX served from the persistent cache.
_SCRIPT = """
import jax, jax.numpy as jnp
from skinjax.runtime import compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event == '/jax/compilation_cache/cache_hits' else None)
print(compilation_cache.enable())
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(len(hits))
"""


def _start(cache_setting):
  env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PLATFORMS='cpu')
  env.pop('JAX_COMPILATION_CACHE_DIR', None)
  env['SKINJAX_COMPILATION_CACHE'] = cache_setting
  out = subprocess.run([sys.executable, '-c', _SCRIPT], env=env, cwd=REPO, check=True, text=True,
                       capture_output=True).stdout.split()
  return out[-2], int(out[-1])


def test_second_start_reads_the_compiled_program_back(tmp_path):
  cache = tmp_path / 'cache'
  assert _start(str(cache)) == (str(cache), 0)
  assert any(cache.iterdir())
  directory, hits = _start(str(cache))
  assert directory == str(cache) and hits >= 1  # the jitted function (and jnp.ones' own program)


def test_cache_can_be_switched_off(tmp_path):
  assert _start('off') == ('None', 0)

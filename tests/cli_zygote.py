"""A Python with skinjax's libraries imported that runs each command in a fork of itself.

  python tests/cli_zygote.py   (then one JSON request per line on stdin)

A request is {"argv": [script.py or "-m", ...], "cwd": DIR, "stdout": FILE, "stderr": FILE,
"env": {...}}; the answer, one JSON line on stdout, is {"returncode": N}. Each command still runs as `__main__` in a
process of its own, with its output in files, its exit status and nothing shared with the next;
it only skips the ~2 s of imports (jax, flax, orbax, grain, TFDS) that a fresh interpreter spends
before a bad-input check that takes milliseconds. Forking is safe here: the imports start no
thread and initialise no JAX backend (checked below), and the scripts and skinjax.main, which
define absl flags, are imported only in the children.
"""

import json
import os
import runpy
import sys
import threading
import traceback

import flax.nnx  # noqa: F401 (imported for the children)
import grain  # noqa: F401
import jax  # noqa: F401
import orbax.checkpoint  # noqa: F401
import tensorflow_datasets  # noqa: F401
from jax._src import xla_bridge

from skinjax.evaluation import checkpoint_eval  # noqa: F401
from skinjax.training import train  # noqa: F401


def run_child(request: dict):
  """In the forked child: become the command; never returns."""
  code = 1
  try:
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])  # before any JAX backend starts: XLA_FLAGS count
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the requests are the zygote's, not the command's
    for fd, path in ((1, request['stdout']), (2, request['stderr'])):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    argv = request['argv']
    # sys.path[0] as Python sets it: the current folder for -m, else the script's folder.
    if argv[0] == '-m':
      sys.path[0] = os.getcwd()
      sys.argv = argv[1:]
      runpy.run_module(argv[1], run_name='__main__', alter_sys=True)
    else:
      sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
      sys.argv = argv
      runpy.run_path(argv[0], run_name='__main__')
    code = 0
  except SystemExit as exit_:
    if exit_.code is None or isinstance(exit_.code, int):
      code = exit_.code or 0
    else:  # sys.exit('message'), as Python prints it
      print(exit_.code, file=sys.stderr)
  except BaseException:  # noqa: BLE001 (what an uncaught exception prints, as Python does)
    traceback.print_exc()
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main():
  assert threading.active_count() == 1 and not xla_bridge.backends_are_initialized(), (
      'forking is only safe before threads or a JAX backend start')
  for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
      run_child(request)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({'returncode': os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == '__main__':
  main()

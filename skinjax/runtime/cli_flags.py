"""Command-line flag errors as one `error: ...` line and exit status 2, never a traceback.

ml_collections applies `--config.a.b=value` overrides while absl parses the flags, before `main`
runs. A key the config lacks escapes that parsing as a bare AttributeError or KeyError
(`AttributeError: "'no_such_key'"`, after 40 lines of traceback) and a value of the wrong type as
absl's two-line "FATAL Flags parsing error". `parse_flags` is the `flags_parser` for `app.run`: it
lets ml_collections parse as always and only explains its failures afterwards.

Why explain after the failure rather than validate sys.argv first: ml_collections stays the only
judge of what an override means (paths with [index], --noconfig.x, flag files, dataclass fields),
the config is not loaded a second time on the normal path, and an error we cannot attribute to an
unknown key is re-raised untouched instead of being hidden.
"""

import difflib
import logging as std_logging
import pathlib
import re
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections.config_flags import config_flags
from ml_collections.config_flags import config_path

from skinjax import kernels

USAGE_ERROR = 2  # the conventional exit status of a command-line usage error (argparse's)


def fail(message: str):
  """Prints `error: message` as a single line on stderr and exits with status 2."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  raise SystemExit(USAGE_ERROR)


def _paths(node, prefix=()):
  """Every dotted key path of a ConfigDict, nested ones included."""
  for key in node.keys():
    yield (*prefix, key)
    if isinstance(node[key], ml_collections.ConfigDict):
      yield from _paths(node[key], (*prefix, key))


def unknown_key(config, path: str) -> str | None:
  """Says which key of the dotted override `path` the config lacks, with the nearest keys.

  None when every key along the path exists, or the path leaves the ConfigDicts (an index into a
  tuple, a dataclass): then the failure is something else.
  """
  try:
    keys = config_path.split(path)
  except ValueError:
    return None
  node, walked = config, []
  for key in keys:
    if not isinstance(node, ml_collections.ConfigDict) or not isinstance(key, str):
      return None
    if key not in node:
      break
    node, walked = node[key], [*walked, key]
  else:
    return None
  here, known = '.'.join(walked), sorted(node.keys())
  # The key may exist elsewhere (train.image_size is data.image_size): that first, then the
  # siblings it resembles, then similar keys elsewhere (more strictly than among siblings).
  elsewhere = {}
  for p in _paths(config):
    elsewhere.setdefault(p[-1], []).append('.'.join(p))
  close = list(elsewhere.get(key, []))
  close += ['.'.join([*walked, k]) for k in difflib.get_close_matches(key, known, n=3, cutoff=0.6)]
  close += [full for leaf in difflib.get_close_matches(key, list(elsewhere), n=3, cutoff=0.8)
            for full in elsewhere[leaf]]
  close = list(dict.fromkeys(close))[:3]
  if close:
    hint = f'did you mean {" or ".join(close)}?'
  else:
    hint = f'no close match; {here or "the config"} has {", ".join(known)}'
  unknown = '.'.join([*walked, key])
  inside = f' in {path}' if unknown != path else ''
  return f'unknown config key {unknown}{inside} ({hint})'


def _config_argument(argv, name):
  """The value of --name=V, -name=V or --name V in argv, the last one winning as in absl."""
  value = None
  for i, arg in enumerate(argv):
    match = re.fullmatch(rf'--?{re.escape(name)}(?:=(.*))?', arg, re.DOTALL)
    if match:
      value = match.group(1) if match.group(1) is not None else (
          argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _overrides(argv, name):
  """The override paths of --name.a.b=V / --noname.a.b, in command-line order."""
  pattern = re.compile(rf'--?(?:no)?{re.escape(name)}\.([^=]+)')
  return [m.group(1) for m in map(pattern.match, argv) if m]


def explain_unknown_key(argv, flag_values, name='config') -> str | None:
  """The unknown-key message for the first override in argv that names a missing key."""
  value = _config_argument(argv, name)
  if value is None:
    return None
  try:
    # The flag's own parser: the same file, `path:argument` syntax and get_config() as parsing.
    config = flag_values[name].parser.parse(value)
  except Exception:  # pylint: disable=broad-except
    return None  # the config itself does not load: leave that error as it is
  for path in _overrides(argv, name):
    message = unknown_key(config, path)
    if message:
      return message
    try:
      config_path.get_value(path, config)
    except Exception as error:  # pylint: disable=broad-except
      # Every key exists but an index does not (`data.split_fractions[5]`).
      return f'config key {path} does not exist: {type(error).__name__}: {error}'
  return None


def parse_flags(argv, flag_values=flags.FLAGS, name='config'):
  """`app.run(main, flags_parser=parse_flags)`: absl's parsing with one-line errors."""
  try:
    argv = flag_values(argv)
    if name in flag_values and flag_values[name].value is not None:
      # A config file that does not load is kept as a placeholder that raises on first use, in
      # `main` (a traceback, or a multi-line message): load it now, while flags are parsed.
      flag_values[name].value.keys()
    return argv
  except flags.Error as error:
    # A wrong type (`--config.train.batch_size=abc`), an unknown flag, a missing required flag.
    fail(str(error))
  except OSError as error:
    # A config file that does not load, met while applying an override to it.
    fail(str(error))
  except (AttributeError, KeyError, IndexError):
    # ml_collections resolving an override path through a key the config does not have.
    message = explain_unknown_key(argv, flag_values, name)
    if message is None:
      raise
    fail(message)


def check_overrides(config_file, config_args):
  """Parses `--config=config_file` with `config_args` (`--config.a.b=V` flags) as skinjax.main
  does, on a private FlagValues; exits with the one-line error when one of them is wrong."""
  argv = ['check', f'--config={config_file}', *config_args]
  flag_values = flags.FlagValues()
  # sys_argv: the overrides are found in argv itself, not in this process's sys.argv.
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values,
                                  lock_config=True, sys_argv=argv)
  parse_flags(argv, flag_values)


def run(main, name='config'):
  """`app.run(main)` for the scripts: a bad or missing flag, an app.UsageError raised by `main`
  and a $SKINJAX_CPU_KERNELS that cannot be honoured are one `error:` line with exit status 2,
  not the module's help followed by the error."""
  def main_with_usage_errors(argv):
    try:
      return main(argv)
    except (app.UsageError, kernels.KernelChoiceError) as error:
      fail(str(error))
  app.run(main_with_usage_errors, flags_parser=lambda argv: parse_flags(argv, name=name))


def check_folder(flag: str, value) -> pathlib.Path | None:
  """Refuses, before any work, a folder flag (an output or data folder) that names a file.

  Without this the mistake surfaces as a FileExistsError traceback from mkdir, some only after
  the whole evaluation has run; a missing folder is fine (it is created, or reported later).
  """
  if not value:
    return None
  path = pathlib.Path(value).expanduser()
  if path.exists() and not path.is_dir():
    fail(f'--{flag}={value} is a file, not a folder; give a folder (a new one is created) or '
         'move the file away.')
  return path


def quiet_tfds_warnings() -> None:
  """Hides TFDS's narration of its internals at WARNING ("Using custom data configuration",
  "Variant folder has no dataset_info.json"), which would bury the one line that matters; our own
  warnings (rows left out, a split that may leak) and TFDS's errors stay visible."""
  logging.get_absl_handler().addFilter(
      lambda record: 'tensorflow_datasets' not in record.pathname
      or record.levelno >= std_logging.ERROR)

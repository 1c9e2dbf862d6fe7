"""Guards of a run's workdir: one trainer at a time, and a resume only of the run that was started.

W/trainer.lock names the process that writes W. A lock left behind by a killed process (same
host, pid no longer running) is taken over with a message; a live one is refused.
W/config.json records the config and the dataset's fingerprint; resuming with another config or
dataset is refused, unless config.train.allow_config_change says the change is deliberate. It
also records the config's warnings (config_checks.config_warnings), which follow from the config
and are recomputed at each start.
"""

import datetime
import json
import os
import pathlib
import socket

import ml_collections

from skinjax.runtime import saved_config

LOCK_NAME = 'trainer.lock'
CONFIG_NAME = 'config.json'
DESCRIPTION_KEY = 'dataset_description'
WARNINGS_KEY = 'warnings'
# Keys that may change between a run and its resume without changing what is trained.
RESUME_NEUTRAL_KEYS = frozenset({
    'data.data_dir', 'data.num_workers', 'train.log_every_steps', 'train.eval_batch_size',
    'train.checkpoint_every_steps', 'train.allow_config_change', 'eval.figures'})
# Changes no flag can allow: the checkpoint would not even load.
NEVER_ALLOWED_KEYS = frozenset({'model.arch', 'model.metadata'})


class WorkdirError(ValueError):
  """The workdir cannot be used as asked; the message says what to do."""


def check_writable(workdir: pathlib.Path):
  """Fails early, before any work, when the workdir cannot be created or written."""
  probe = workdir / f'.write_test.{os.getpid()}'
  if workdir.exists() and not workdir.is_dir():  # mkdir's error would blame permissions
    raise WorkdirError(f'The workdir {workdir} is a file, not a folder; choose another --workdir '
                       'or move the file away.')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  except OSError as error:
    raise WorkdirError(f'Cannot write to the workdir {workdir}: {error.strerror or error}. Choose '
                       'a --workdir on a writable disk (or fix its permissions).') from None


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # it exists, under another user
  return True


class Lock:
  """W/trainer.lock, created atomically (O_EXCL) so two trainers cannot both take it."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / LOCK_NAME
    self.owner = {'pid': os.getpid(), 'host': socket.gethostname()}

  def acquire(self):
    for _ in range(3):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        self._take_over_if_stale()
        continue
      with os.fdopen(fd, 'w') as f:
        json.dump({**self.owner, 'started': datetime.datetime.now().isoformat(timespec='seconds')},
                  f)
      return
    raise WorkdirError(f'Could not take the lock {self.path}; another trainer keeps taking it.')

  def _take_over_if_stale(self):
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return  # released meanwhile
    except ValueError:
      holder = {}  # empty or torn: its writer died between creating and writing it
    pid, host = holder.get('pid'), holder.get('host')
    if pid is not None and pid != os.getpid():
      if host != self.owner['host']:
        raise WorkdirError(
            f'{self.path.parent} is locked by a trainer on host {host} (pid {pid}, started '
            f'{holder.get("started")}). If that trainer is gone, delete {self.path} and rerun.')
      if _process_alive(pid):
        raise WorkdirError(
            f'Another trainer (pid {pid}, started {holder.get("started")}) is writing '
            f'{self.path.parent}. Wait for it to finish, stop it, or use another --workdir.')
      print(f'Taking over the stale lock of pid {pid} (started {holder.get("started")}), '
            'which is no longer running.')
    self.path.unlink(missing_ok=True)

  def release(self):
    try:
      if json.loads(self.path.read_text()).get('pid') == os.getpid():
        self.path.unlink()
    except (FileNotFoundError, ValueError):
      pass


def _flat(tree: dict, prefix: str = '') -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flat(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _as_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())  # tuples become lists, as in the saved file


def _extra_sources(fingerprint: dict) -> list[str]:
  return [extra['name'] for extra in fingerprint.get('extra_train', [])]


def check_resume(workdir: pathlib.Path, config: ml_collections.ConfigDict, dataset: dict,
                 has_checkpoint: bool):
  """Refuses to resume W with another config or dataset, unless the change is allowed."""
  path = workdir / CONFIG_NAME
  if not has_checkpoint or not path.exists():
    return
  saved = json.loads(path.read_text())
  saved_dataset = saved.pop('dataset', None)
  saved.pop(DESCRIPTION_KEY, None)  # follows from the dataset, compared through its fingerprint
  saved.pop(WARNINGS_KEY, None)  # follow from the config compared below; recomputed at each start
  if saved_dataset is not None and _extra_sources(saved_dataset) != _extra_sources(dataset):
    # Not even a deliberate change: the data stream's position and the splits would mean
    # something else.
    trained, now = (' + '.join(_extra_sources(d)) or 'none' for d in (saved_dataset, dataset))
    raise WorkdirError(
        f'{workdir} holds a run trained with the extra datasets {trained}, but this config names '
        f'{now} (config.data.extra_train): a run cannot change its sources midway. Rerun with '
        f'the same extra_train, or use another --workdir.')
  old, new = (_flat(saved_config.upgrade(saved)),
              _flat(saved_config.upgrade(_as_json(config))))
  changed = sorted(k for k in old.keys() | new.keys()
                   if k not in RESUME_NEUTRAL_KEYS and old.get(k) != new.get(k))
  lines = [f'  {k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed]
  if saved_dataset is not None and saved_dataset != dataset:
    lines.append(f'  the dataset: {saved_dataset} -> {dataset}')
  if not lines:
    return
  forbidden = [k for k in changed if k in NEVER_ALLOWED_KEYS]
  if forbidden:
    what = (f'a {old.get("model.arch")} run, but config.model.arch is {new.get("model.arch")!r}'
            if 'model.arch' in forbidden else
            f'a model with metadata {old.get("model.metadata")}, but config.model.metadata is '
            f'{new.get("model.metadata")}: the model would have other parameters')
    raise WorkdirError(f'{workdir} holds checkpoints of {what}. Use another --workdir, or delete '
                       f'{workdir} to start over.')
  if config.train.allow_config_change:
    print('Resuming with a changed config (config.train.allow_config_change):\n'
          + '\n'.join(lines))
    return
  raise WorkdirError(
      f'{workdir} holds a run trained with another config or dataset:\n' + '\n'.join(lines)
      + '\nResuming would mix two runs. Use another --workdir, or rerun with '
      '--config.train.allow_config_change=true if the change is deliberate (e.g. more epochs).')


def write_config(workdir: pathlib.Path, config: ml_collections.ConfigDict, dataset: dict,
                 description: dict, warnings: list[str]):
  """W/config.json: the resolved config, the dataset's fingerprint and its description (classes,
  melanoma class, groups, challenge format), which evaluation and prediction read, and the
  config's warnings (an empty list: none); atomically."""
  path = workdir / CONFIG_NAME
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps({**_as_json(config), 'dataset': dataset, DESCRIPTION_KEY: description,
                             WARNINGS_KEY: warnings}, indent=2) + '\n')
  os.replace(tmp, path)

"""Orbax checkpoints of a run: `latest` to resume from, `best` to report.

W/checkpoints/latest  max_to_keep=1: train state, grain iterator state, progress (JSON)
W/checkpoints/best    max_to_keep=1: model variables and the epoch summary that made them best
With config.train.ema_decay > 0 the train state also holds the variables' moving average, and
that average is what `best` keeps and what restoring a model from `latest` gives.
Orbax writes each step into a temporary directory and renames it when complete, so a run killed
mid-write never leaves a torn checkpoint that looks valid.
"""

import contextlib
import pathlib

import grain
import jax
import orbax.checkpoint as ocp


def has_checkpoint(workdir: pathlib.Path) -> bool:
  """Whether W holds a complete `latest` checkpoint (Orbax names finished steps by number)."""
  latest = workdir / 'checkpoints' / 'latest'
  return latest.is_dir() and any(p.name.isdigit() for p in latest.iterdir())


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True,
      # Synchronous: checkpoints are per epoch, and the train step donates the state buffers.
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(directory.absolute(), options=options)


class RunCheckpoints:

  def __init__(self, workdir: pathlib.Path):
    self.latest = _manager(workdir / 'checkpoints' / 'latest')
    self.best = _manager(workdir / 'checkpoints' / 'best')

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.latest_step()

  def save_latest(self, step: int, state, data_iterator, progress: dict):
    with self._explained_write_errors(self.latest, step):
      self.latest.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(_stored(state)),
          data_iter=grain.checkpoint.CheckpointSave(data_iterator),
          progress=ocp.args.JsonSave(progress)))

  def restore_latest(self, abstract_state, data_iterator):
    step = self.latest.latest_step()
    restored = self.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_stored(abstract_state)),
        data_iter=grain.checkpoint.CheckpointRestore(data_iterator),
        progress=ocp.args.JsonRestore()))
    return type(abstract_state)(**restored.state), restored.progress

  def latest_progress(self) -> dict | None:
    step = self.latest.latest_step()
    if step is None:
      return None
    return self.latest.restore(step, args=ocp.args.Composite(progress=ocp.args.JsonRestore())).progress

  @staticmethod
  @contextlib.contextmanager
  def _explained_write_errors(manager: ocp.CheckpointManager, step: int):
    """A failed write (a full disk) leaves Orbax's temporary directory, never a checkpoint."""
    previous = manager.latest_step()
    try:
      yield
    except OSError as error:
      kept = (f'The previous checkpoint, step {previous} is intact'
              if previous is not None else 'No earlier checkpoint exists')
      raise OSError(error.errno, f'Writing checkpoint step {step} into {manager.directory} failed '
                    f'({error.strerror or error}). {kept}: free disk space and run the same command '
                    'again to resume.') from error

  def save_best(self, step: int, params, rest, summary: dict):
    if step in self.best.all_steps():
      return  # a resumed epoch that was already saved as best before the process died
    with self._explained_write_errors(self.best, step):
      self.best.save(step, args=ocp.args.Composite(
          model=ocp.args.StandardSave({'params': params, 'rest': rest}),
          summary=ocp.args.JsonSave(summary)))


  def locate(self, which: str) -> tuple[str, int]:
    """('best' or 'latest', step) of 'best', 'latest' or a step number kept by either."""
    if which in ('best', 'latest'):
      step = getattr(self, which).latest_step()
      if step is None:
        raise FileNotFoundError(f'No {which} checkpoint in this workdir.')
      return which, step
    step = int(which)
    for kind in ('best', 'latest'):
      if step in getattr(self, kind).all_steps():
        return kind, step
    kept = sorted({*self.best.all_steps(), *self.latest.all_steps()})
    raise FileNotFoundError(f'No checkpoint of step {step} in this workdir; it keeps steps '
                            f'{", ".join(map(str, kept)) or "none"}.')

  def saved_param_shapes(self, which: str) -> dict[str, tuple[int, ...]]:
    """{'head/kernel': shape, ...} of a checkpoint's parameters, read from metadata only."""
    kind, step = self.locate(which)
    item = 'model' if kind == 'best' else 'state'
    return _array_shapes(self._metadata(kind, step, item)['params'])

  def latest_state_size(self) -> int:
    """How many arrays the latest train state holds (its optimiser layout), from metadata only."""
    return len(jax.tree.leaves(self._metadata('latest', self.latest.latest_step(), 'state')))

  def latest_has_ema(self) -> bool:
    """Whether the latest train state holds a moving average of the weights (from metadata)."""
    return self._has_ema('latest', self.latest.latest_step())

  def _has_ema(self, kind: str, step: int) -> bool:
    return 'ema' in self._metadata(kind, step, 'state')

  def _metadata(self, kind: str, step: int, item: str):
    # The item's handler reads its own metadata file; no arrays are loaded.
    return ocp.StandardCheckpointHandler().metadata(
        getattr(self, kind).directory / str(step) / item)

  def restore_model(self, which: str, abstract_params, abstract_rest):
    """Model variables from 'best', 'latest' or a step number of either."""
    kind, step = self.locate(which)
    target = {'params': abstract_params, 'rest': abstract_rest}
    if kind == 'latest':
      # The averaged model where the run kept one: the model its validation scored.
      if self._has_ema(kind, step):
        target = {'ema': target}
      state = self.latest.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target)))).state
      state = state.get('ema', state)
      return step, state['params'], state['rest']
    model = self.best.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(target))).model
    return step, model['params'], model['rest']

  def wait_and_close(self):
    for manager in (self.latest, self.best):
      manager.wait_until_finished()
      manager.close()


def _stored(state) -> dict:
  """A train state as `latest` stores it: with an `ema` entry only where the run keeps a moving
  average, so that runs without one store (and restore) the layout they always did."""
  stored = {'step': state.step, 'params': state.params, 'rest': state.rest,
            'opt_state': state.opt_state}
  if state.ema is not None:
    stored['ema'] = state.ema
  return stored


def _array_shapes(metadata) -> dict[str, tuple[int, ...]]:
  """{'a/b/c': shape} of every array in a checkpoint item's metadata tree."""
  shapes = {}

  def visit(node, path):
    if hasattr(node, 'shape'):
      shapes['/'.join(p for p in path if p != 'value')] = tuple(node.shape)
    elif isinstance(node, dict):
      for key, child in node.items():
        visit(child, (*path, str(key)))

  visit(metadata, ())
  return shapes


def abstract(tree, sharding):
  """ShapeDtypeStructs with the target sharding, the restore target orbax wants."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)

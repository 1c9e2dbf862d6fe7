"""A finished (or running) training run, loaded to predict: config, checkpointed model, preprocessing.

The model is rebuilt from the run's own W/config.json as an abstract shape and filled from the
Orbax checkpoint, never from ImageNet weights: `config.model.init` only says how training began.
Images go through the run's evaluation pipeline and normaliser, so predictions here match the
trainer's own report.
"""

import contextlib
import dataclasses
import json
import pathlib
import re
from typing import Callable

import jax
import ml_collections
import numpy as np
from flax import nnx

from skinjax.data import datasets
from skinjax.data import patient_metadata
from skinjax.data import pipeline
from skinjax.evaluation import evaluate
from skinjax.evaluation import external
from skinjax.evaluation import tta
from skinjax.models import run_model as run_model_lib
from skinjax.runtime import checkpoint as ckpt
from skinjax.runtime import sharding
from skinjax.runtime import saved_config
from skinjax.runtime import steps


class RunInputError(ValueError):
  """A workdir or checkpoint that cannot be evaluated; the message says what to do instead."""


@dataclasses.dataclass
class LoadedRun:
  workdir: pathlib.Path
  config: ml_collections.ConfigDict
  checkpoint: str  # as asked for: 'best', 'latest' or a step number
  step: int
  graphdef: nnx.GraphDef  # of the model in inference mode
  params: nnx.State
  rest: nnx.State
  normalise: Callable
  description: datasets.DatasetDescription  # the classes it predicts, from W/config.json

  @property
  def num_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.params)))

  @property
  def eval_view(self) -> pipeline.EvalView:
    return pipeline.EvalView.from_config(self.config.data)

  @property
  def metadata_encoder(self) -> patient_metadata.MetadataEncoder | None:
    """The patient metadata the model takes beside the image; None for an image-only model."""
    return patient_metadata.MetadataEncoder.from_config(self.config)

  def model(self):
    """The nnx Classifier in inference mode."""
    return nnx.merge(self.graphdef, self.params, self.rest)

  def predict(self, source, indices, *, tta_mode: str = 'none',
              batch_size: int | None = None) -> np.ndarray:
    """predict_source with this run: what an exported model's OnnxRun.predict also offers."""
    return predict_source(self, source, indices, tta_mode=tta_mode, batch_size=batch_size)


def check_checkpoint_name(checkpoint: str):
  if checkpoint not in ('best', 'latest') and not re.fullmatch(r'\d+', checkpoint):
    raise RunInputError(f'--checkpoint={checkpoint!r}: use best, latest or a step number.')


def load_run(workdir, checkpoint: str = 'best') -> LoadedRun:
  """Restores `checkpoint` of the run in `workdir`, checking each way it could be the wrong thing."""
  workdir = pathlib.Path(workdir).expanduser()
  check_checkpoint_name(checkpoint)
  train_hint = f'python -m skinjax.main --config=CONFIG --workdir={workdir}'
  if workdir.exists() and not workdir.is_dir():
    raise RunInputError(f'--workdir {workdir} is a file, not a folder; pass the --workdir of a '
                        'training run (python -m skinjax.main --config=CONFIG --workdir=W).')
  if not workdir.is_dir():
    raise RunInputError(f'--workdir {workdir} does not exist; pass the --workdir of a training '
                        'run (python -m skinjax.main --config=CONFIG --workdir=W).')
  if not (workdir / 'config.json').is_file():
    raise RunInputError(f'{workdir} has no config.json, so it is not a skinjax training run; pass '
                        'the --workdir that python -m skinjax.main wrote.')
  try:
    saved = json.loads((workdir / 'config.json').read_text())
    description = datasets.of_run(saved)
    config = ml_collections.ConfigDict(saved_config.upgrade(saved))
  except (ValueError, KeyError, TypeError) as error:
    raise RunInputError(f'{workdir / "config.json"} is not valid JSON ({error}); restore it from '
                        'the training run.') from None
  if not (workdir / 'checkpoints').is_dir():
    raise RunInputError(f'{workdir} has no checkpoints yet; train it first: {train_hint}')
  checkpoints = ckpt.RunCheckpoints(workdir)
  try:
    try:
      checkpoints.locate(checkpoint)
    except FileNotFoundError as error:
      if checkpoint.isdigit():
        fix = 'pass --checkpoint=best, latest or one of those steps.'
      elif checkpoint == 'latest':  # suggesting --checkpoint=latest again would go round in circles
        fix = (f'checkpoints appear at the end of each epoch: train it for at least one epoch '
               f'({train_hint}).')
      else:
        fix = (f'checkpoints appear at the end of each epoch: train longer ({train_hint}) or pass '
               '--checkpoint=latest.')
      raise RunInputError(f'{workdir}: {error} To fix: {fix}') from None

    run_model = run_model_lib.RunModel(config, description.num_classes)
    abstract_params, abstract_rest = run_model.abstract_state
    _check_saved_shapes(checkpoints.saved_param_shapes(checkpoint), abstract_params, workdir,
                        checkpoint, config.model.arch, description)
    replicated = sharding.replicated(sharding.data_mesh())
    step, params, rest = checkpoints.restore_model(
        checkpoint, ckpt.abstract(abstract_params, replicated),
        ckpt.abstract(abstract_rest, replicated))
  finally:
    checkpoints.wait_and_close()
  return LoadedRun(workdir, config, checkpoint, step, run_model.graphdef(), params, rest,
                   run_model.normalise, description)


def _param_shapes(params) -> dict[str, tuple[int, ...]]:
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path[:-1]): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


def _check_saved_shapes(saved: dict, abstract_params, workdir, checkpoint, arch, description):
  """A clear refusal before Orbax would fail on the first mismatching array."""
  classes = description.num_classes
  saved_classes = saved.get('head/kernel', (0, classes))[-1]
  if saved_classes != classes:
    raise RunInputError(
        f'The {checkpoint} checkpoint in {workdir} has a {saved_classes}-class head, but its '
        f'config.json says it was trained on {description.name} with {classes} classes '
        f'({", ".join(description.class_names)}); was config.json replaced? Use the config.json '
        'the run wrote.')
  expected = _param_shapes(abstract_params)
  wrong = [f'{name} {saved.get(name)} != {shape}' for name, shape in expected.items()
           if saved.get(name) != tuple(shape)]
  if wrong:
    raise RunInputError(
        f'The {checkpoint} checkpoint in {workdir} does not fit a {arch} model as config.json '
        f'describes it ({len(wrong)} parameters differ, e.g. {wrong[0]}); was config.json '
        'replaced? Evaluate with the config the run was trained with.')


def predict_source(run: LoadedRun, source, indices, *, tta_mode: str = 'none',
                   batch_size: int | None = None) -> np.ndarray:
  """Softmax probabilities (len(indices), classes) through the run's evaluation pipeline."""
  mesh = sharding.data_mesh()
  devices = mesh.devices.size
  batch_size = batch_size or run.config.train.eval_batch_size
  batch_size = -(-batch_size // devices) * devices  # another machine may have other devices
  predict_step = jax.jit(
      tta.with_tta(steps.make_predict_step(run.graphdef, normalise=run.normalise), tta_mode),
      out_shardings=sharding.batch_sharding(mesh))
  batches = pipeline.eval_dataset(source, np.asarray(indices), run.eval_view,
                                  global_batch_size=batch_size,
                                  metadata_encoder=run.metadata_encoder)
  with _naming_an_unreadable_file(source, indices):
    return evaluate.predict(predict_step, run.params, run.rest, batches, mesh, len(indices),
                            run.description.num_classes)


def eval_view(run: LoadedRun, source, index: int) -> np.ndarray:
  """The uint8 image the model sees for `source[index]` (what Grad-CAM is drawn on)."""
  with _naming_an_unreadable_file(source, [index]):
    return run.eval_view(source[index]['image'])


def encoded_metadata(run: LoadedRun, source, index: int) -> np.ndarray | None:
  """What the model takes beside `source[index]`'s image: its encoded metadata, or None."""
  encoder = run.metadata_encoder
  return encoder.encode(patient_metadata.of_record(source[index])) if encoder else None


@contextlib.contextmanager
def _naming_an_unreadable_file(source, indices):
  """Image files are checked before they are predicted, but one can change after its check: its
  decoding error, raised in a pipeline thread, names no file. Find the file and name it."""
  try:
    yield
  except Exception:
    if isinstance(source, external.ImageFiles):
      external.check_readable([source.paths[int(i)] for i in indices])  # raises, naming it
    raise

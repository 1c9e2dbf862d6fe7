"""An exported model run back through onnxruntime, standing in for a training run's checkpoint.

`OnnxRun` offers what predict.py and evaluate.py use of an inference.LoadedRun (config, classes,
evaluation view, `predict`), read from the export's model card. The images are decoded, resized
and centre-cropped here exactly as skinjax's evaluation view does it; the colour constancy, the
normalisation and the softmax are the graph's.
"""

import dataclasses
import json
import pathlib

from absl import app
import ml_collections
import numpy as np

from skinjax.data import datasets
from skinjax.data import pipeline
from skinjax.evaluation import inference
from skinjax.evaluation import tta
from skinjax.export import model_card
from skinjax.export import onnx_file
from skinjax.runtime import saved_config


class OnnxInputError(ValueError):
  """An export folder or input that onnxruntime cannot be given; the message says the fix."""


@dataclasses.dataclass
class OnnxRun:
  workdir: pathlib.Path  # the export folder: evaluate.py writes into its eval/ by default
  card: dict
  session: object  # onnxruntime.InferenceSession
  config: ml_collections.ConfigDict
  description: datasets.DatasetDescription

  @property
  def checkpoint(self) -> str:
    return 'onnx'  # names evaluate.py's folders: <split>-onnx[-tta_<mode>]

  @property
  def step(self) -> int:
    return self.card['run']['step']

  @property
  def num_params(self) -> int:
    return self.card['run']['num_params']

  @property
  def image_size(self) -> int:
    return self.card['input']['image_size']

  @property
  def eval_view(self) -> pipeline.EvalView:
    """The view fed to the graph: resized and cropped, with no colour constancy (the graph's)."""
    return pipeline.EvalView(self.image_size, self.card['input']['resize_mode'],
                             source_side=self.card['input'].get('source_short_side'))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """(N, classes) from uint8 (N, S, S, 3) views; anything else is refused in one line."""
    images = np.asarray(images)
    expected = (self.image_size, self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != expected or images.dtype != np.uint8:
      raise OnnxInputError(
          f'The ONNX model takes uint8 RGB images of {expected[0]}x{expected[1]} pixels as '
          f'(batch, {expected[0]}, {expected[1]}, 3); got {images.dtype} {images.shape}. Resize '
          'and crop them as model_card.json says (input.resize_rule), or give the image files '
          'to scripts/predict.py --onnx, which does.')
    (probs,) = self.session.run([onnx_file.OUTPUT_NAME],
                                {onnx_file.INPUT_NAME: np.ascontiguousarray(images)})
    return probs

  def predict(self, source, indices, *, tta_mode: str = 'none',
              batch_size: int | None = None) -> np.ndarray:
    """inference.predict_source's result, computed by onnxruntime."""
    batch_size = batch_size or self.config.train.eval_batch_size
    views = tta.views(tta_mode)
    probs = np.full((len(indices), self.description.num_classes), np.nan, np.float32)
    for batch in pipeline.eval_dataset(source, np.asarray(indices), self.eval_view,
                                       global_batch_size=batch_size):
      real = batch['position'] >= 0
      images = batch['image'][real]
      probs[batch['position'][real]] = np.mean(
          [self.probabilities(np.asarray(view(images))) for view in views], axis=0)
    return probs


def check_model_flags(workdir: str | None, onnx: str | None, checkpoint_given: bool):
  """predict.py's and evaluate.py's choice of model: a --workdir or an --onnx export, not both."""
  if bool(workdir) == bool(onnx):
    raise app.UsageError('Pass either --workdir (a training run) or --onnx (an export), not both '
                         'nor neither.')
  if onnx and checkpoint_given:
    raise app.UsageError("--checkpoint picks a training run's checkpoint; an --onnx export holds "
                         'one already (model_card.json says which): leave --checkpoint out.')


def load_model(workdir: str | None, onnx: str | None, checkpoint: str):
  """The run whose model predicts: the --onnx export, or the --workdir run's checkpoint."""
  return open_export(onnx) if onnx else inference.load_run(workdir, checkpoint)


def open_export(path) -> OnnxRun:
  """The export in folder `path` (or of its model.onnx), with its model card, checked."""
  path = pathlib.Path(path).expanduser()
  folder = path.parent if path.suffix == '.onnx' else path
  onnx_path = path if path.suffix == '.onnx' else folder / onnx_file.ONNX_FILE
  hint = 'pass the --out folder of scripts/export.py (or its model.onnx)'
  if not onnx_path.is_file():
    raise OnnxInputError(f'--onnx {path}: there is no {onnx_path}; {hint}.')
  card_path = folder / model_card.CARD_FILE
  try:
    card = json.loads(card_path.read_text())
    description = datasets.DatasetDescription.from_json(card['dataset_description'])
    config = ml_collections.ConfigDict(saved_config.upgrade(card['training_config']))
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise OnnxInputError(f'--onnx {path}: {card_path} is missing or unreadable ({error}); '
                         f'export the run again into an empty folder: {hint}.') from None
  try:
    import onnxruntime  # noqa: PLC0415 (an optional dependency: only --onnx needs it)
  except ImportError:
    raise OnnxInputError('onnxruntime is not installed; install the export extra: '
                         f'{onnx_file.EXTRA_HINT}') from None
  try:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
  except Exception as error:  # onnxruntime raises its own types for unreadable or invalid files
    raise OnnxInputError(f'--onnx {onnx_path} cannot be loaded by onnxruntime '
                         f'({" ".join(str(error).split())[:200]}); export the run again.') from None
  run = OnnxRun(folder, card, session, config, description)
  graph_size = session.get_inputs()[0].shape[1:3]
  if list(graph_size) != [run.image_size, run.image_size]:
    raise OnnxInputError(
        f'--onnx {onnx_path} takes {graph_size[0]}x{graph_size[1]} images, but the model card '
        f'beside it says {run.image_size}x{run.image_size}: the card belongs to another export. '
        'Keep each model.onnx with the model_card.json its export wrote.')
  return run

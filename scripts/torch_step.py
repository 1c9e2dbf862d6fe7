r"""PyTorch's usual train step, served to scripts/benchmark_train.py by its PyTorch workers.

torch_lite_step.py (the reference EfficientNet-Lite) and torch_resnet50_step.py (a plain PyTorch
ResNet50) differ only in their model and in skinjax's preprocessing for it; the step and the
protocol are this file's, so that the two time the same thing. It needs torch and numpy only.
"""

import json
import sys
import time
from typing import Callable

import numpy as np
import torch

from keras_step import synthetic_images_and_labels


def serve(model: torch.nn.Module, normalise: Callable, image_size: int, batch_size: int,
          num_classes: int):
  """Trains `model` on the benchmark batch as a worker, until stdin closes.

  The step is PyTorch's usual one: channels_last, training mode (batch statistics, dropout),
  cross-entropy, Adam, zero_grad/backward/step. The batch is the benchmark's own uint8 images,
  put through `normalise` (float NCHW -> model input) on every step, as skinjax's step normalises
  on the device. The protocol is keras_step.py's: one JSON line when ready (the first step's time
  as compile_s), then a number of steps per line on stdin, answered with 'done'.
  """
  model = model.to(memory_format=torch.channels_last).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  images, labels = synthetic_images_and_labels(batch_size, image_size, num_classes)
  # NHWC uint8 -> NCHW float in channels_last memory: the same bytes, viewed as PyTorch wants.
  pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
      memory_format=torch.channels_last)
  targets = torch.from_numpy(labels.astype(np.int64))

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(normalise(pixels.float())), targets)
    loss.backward()
    optimizer.step()

  start = time.perf_counter()
  step()
  print(json.dumps({'compile_s': time.perf_counter() - start,
                    'backend_version': torch.__version__,
                    'threads': torch.get_num_threads()}), flush=True)
  for line in sys.stdin:
    for _ in range(int(line)):
      step()
    print('done', flush=True)

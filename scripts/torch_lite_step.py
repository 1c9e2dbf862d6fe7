r"""The reference PyTorch EfficientNet-Lite's train step, as a worker of scripts/benchmark_train.py.

skinjax's Lite models port this reference (efficientnet-lite-pytorch), so its own training step in
PyTorch is the speed to compare with. benchmark_train.py --compare=torch_reference runs this file
with --torch_python, an interpreter with torch and the reference package (no jax, no skinjax):

  /tmp/refenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 numpy
  python scripts/torch_lite_step.py --variant=lite0 --image_size=128 --batch_size=32

The step is PyTorch's usual one (torch_step.py, shared with torch_resnet50_step.py): channels_last,
the reference model with a new head of --num_classes, cross-entropy, Adam, zero_grad/backward/step,
in training mode (batch statistics, dropout). The batch is the benchmark's own uint8 images, scaled
as skinjax's 'lite' preprocessing ((x - 127) / 128) on every step, as skinjax's step normalises on
the device. The protocol is keras_step.py's: one JSON line when ready (the first step's time as
compile_s), then a number of steps per line on stdin, answered with 'done'.
"""

import argparse

import torch
from efficientnet_lite_pytorch import EfficientNet

from torch_step import serve


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--variant', default='lite0', choices=['lite0', 'lite1', 'lite2', 'lite3',
                                                             'lite4'])
  parser.add_argument('--image_size', type=int, default=128)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--num_classes', type=int, default=7)
  args = parser.parse_args()
  torch.manual_seed(0)
  model = EfficientNet.from_name(f'efficientnet-{args.variant}', num_classes=args.num_classes)
  serve(model, lambda x: (x - 127.0) / 128.0, args.image_size, args.batch_size, args.num_classes)


if __name__ == '__main__':
  main()

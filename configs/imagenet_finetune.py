"""Shared recipe of the four ImageNet-backbone configs (vgg16, xception, resnet50, efficientnetb7).

Phase 1 trains the new head on the frozen backbone (BatchNorm in inference mode); phase 2
unfreezes the backbone at a tenth of the learning rate. The input is the study's 224x224.
Not run on its own: use one of the backbone configs.
"""

from configs import base


def get_config(arch: str = 'efficientnetb7'):
  config = base.get_config()
  config.model.arch = arch
  config.model.init = 'imagenet'
  config.data.image_size = 224
  config.train.batch_size = 32
  config.train.num_epochs = 20
  config.train.learning_rate = 1e-3
  config.train.freeze_backbone_epochs = 2
  config.train.unfreeze = 'all'
  config.train.backbone_lr_multiplier = 0.1
  config.train.class_weighting = 'sqrt_inverse_freq'
  return config

"""EfficientNet-Lite0 from its ImageNet weights, fine-tuned on HAM10000 within 45 minutes on a 2-core CPU.

DRAFT: figures to come.
"""

from configs import imagenet_finetune


def get_config():
  config = imagenet_finetune.get_config('efficientnet_lite0')
  config.data.image_size = 128
  config.data.split = 'lesion_grouped'
  config.train.batch_size = 32
  config.train.num_epochs = 10
  config.train.freeze_backbone_epochs = 1
  config.train.unfreeze = 'all'
  config.train.learning_rate = 1e-3
  config.train.backbone_lr_multiplier = 0.3
  config.train.balanced_sampling = True
  config.train.class_weighting = 'none'
  config.train.early_stopping.patience = 0
  return config

"""DRAFT"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.arch = 'small_cnn'
  config.data.image_size = 64
  config.data.split = 'lesion_grouped'
  config.data.augment.crop_scale = (0.5, 1.0)
  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.class_weighting = 'inverse_freq'
  config.train.early_stopping.patience = 0
  return config

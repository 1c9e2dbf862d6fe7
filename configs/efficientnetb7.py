"""EfficientNetB7 fine-tuned from ImageNet weights on prepared HAM10000, in two phases.

Run:
  python -m skinjax.main --config=configs/efficientnetb7.py --workdir=runs/efficientnetb7 \
      --config.data.data_dir=~/tensorflow_datasets

Phase 1 trains the new head on the frozen backbone (BatchNorm in inference mode); phase 2
unfreezes the backbone at a tenth of the learning rate. The input is the study's 224x224.

Result: not run yet. It needs the Keras ImageNet weight port (config.model.init='imagenet'),
which this version does not have: until then it stops with a message saying so.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.arch = 'efficientnetb7'
  config.model.init = 'imagenet'
  config.data.image_size = 224  # the study's size; the Keras default for EfficientNetB7 is 600
  config.train.batch_size = 32
  config.train.num_epochs = 20
  config.train.learning_rate = 1e-3
  config.train.freeze_backbone_epochs = 2
  config.train.unfreeze = 'all'
  config.train.backbone_lr_multiplier = 0.1
  config.train.class_weighting = 'sqrt_inverse_freq'
  return config

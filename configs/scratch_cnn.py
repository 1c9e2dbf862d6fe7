"""From-scratch CNN baseline on prepared HAM10000, the study's baseline with our fixes.

Run:
  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 --data_dir=~/tensorflow_datasets
  python -m skinjax.main --config=configs/scratch_cnn.py --workdir=runs/scratch \
      --config.data.data_dir=~/tensorflow_datasets

Result: see the README's results table (filled in from runs of this config).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.arch = 'small_cnn'
  config.data.image_size = 128
  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.class_weighting = 'sqrt_inverse_freq'
  return config

"""From-scratch CNN baseline on prepared HAM10000, the study's baseline with our fixes.

Run:
  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 --data_dir=~/tensorflow_datasets
  python -m skinjax.main --config=configs/scratch_cnn.py --workdir=runs/scratch \
      --config.data.data_dir=~/tensorflow_datasets

It gave (2-core CPU, 64 px, 8 epochs, 9.5 min, lesion-grouped test split of 2,003 images):
  python -m skinjax.main --config=configs/scratch_cnn.py --workdir=runs/scratch64 \
      --config.data.data_dir=~/tensorflow_datasets --config.data.image_size=64 \
      --config.train.num_epochs=8
  balanced accuracy 0.521, accuracy 0.769, macro-F1 0.477, macro AUC 0.924, melanoma recall 0.565
  (best epoch 6 of 8 by validation balanced accuracy). The full 30 epochs at 128 px are not run yet.
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

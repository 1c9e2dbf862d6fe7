"""Shared test helpers: a tiny synthetic-data config that trains in seconds on 2 CPU cores."""

from configs import demo


def tiny_config(**overrides):
  config = demo.get_config()
  config.data.synthetic_examples = 240
  config.data.image_size = 24
  config.train.batch_size = 16
  config.train.eval_batch_size = 32
  config.train.num_epochs = 2
  config.train.log_every_steps = 1
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split('.')
    for key in parents:
      node = node[key]
    node[leaf] = value
  return config

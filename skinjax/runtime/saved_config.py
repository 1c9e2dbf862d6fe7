"""A run's saved config (W/config.json) read by today's code: one upgrade for every reader."""

import json

from skinjax.data import augment as augment_lib


def upgrade(saved: dict) -> dict:
  """A run's W/config.json (nested, as saved) as today's keys say it; a new dict.

  Runs from before data.dataset trained on HAM10000, through data.source='ham10000', now called
  'prepared', and without colour constancy, larger evaluation views, evaluation views at the
  training images' resolution (off), a validated TTA mode, the camera augmentations (off, as
  they trained), extra training datasets, folds, patient metadata, the switch for the report's
  figures (on, as they were written) or a moving average of the weights (none).
  """
  upgraded = json.loads(json.dumps(saved))
  data = upgraded.setdefault('data', {})
  data.setdefault('dataset', 'ham10000')
  data.setdefault('colour_constancy', 'none')
  data.setdefault('shades_of_grey_power', 6.0)
  data.setdefault('eval_image_size', 0)
  data.setdefault('match_training_resolution', False)
  data.setdefault('training_short_side', 0)
  for key, value in (('extra_train', []), ('label_map', {}), ('extra_val_fraction', 0.0),
                     ('source_weights', []), ('folds', 0), ('fold', 0)):
    data.setdefault(key, value)
  augment = data.setdefault('augment', {})
  for key in augment_lib.CAMERA_KEYS:
    augment.setdefault(key, 0.0)
  augment.setdefault('shades_of_grey_powers', [])
  augment.setdefault('camera_probability', 1.0)
  model = upgraded.setdefault('model', {})
  model.setdefault('metadata', [])
  # configs/base.py's default, so that resuming an older run sees no change: without metadata
  # it does nothing.
  model.setdefault('metadata_dropout', 0.3)
  train = upgraded.setdefault('train', {})
  train.setdefault('ema_decay', 0.0)
  train.setdefault('logit_adjustment', 0.0)
  evaluation = upgraded.setdefault('eval', {})
  evaluation.setdefault('validated_tta', '')
  evaluation.setdefault('figures', True)
  if data.get('source') == 'ham10000':
    data['source'] = 'prepared'
  return upgraded

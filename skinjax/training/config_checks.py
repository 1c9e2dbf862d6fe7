"""Checks a config before any work starts, with messages that say what to change.

ml_collections already rejects unknown keys and wrong types when a locked config is overridden
from the command line; this catches values outside their allowed sets and initial weights that
are not there. The workdir's own guards are in skinjax/training/workdir.py.
`config_warnings` names valid configs that silently train or evaluate something other than what
was probably meant; they do not stop the run.
"""

import ml_collections

from skinjax.data import augment as augment_lib
from skinjax.data import patient_metadata
from skinjax.data import splits
from skinjax.weights import pretrained

CHOICES = {
    'data.source': ('prepared', 'synthetic', 'ham10000'),  # 'ham10000': the old name of 'prepared'
    'data.split': ('lesion_grouped', 'random_image'),
    'data.resize': ('center_crop', 'squash'),
    'data.preprocessing': ('keras', 'minus_one_one'),
    'data.colour_constancy': ('none', 'shades_of_grey'),
    'model.dtype': ('float32', 'bfloat16'),
    'train.optimizer': ('adamw', 'sgd'),
    'train.schedule': ('cosine', 'constant'),
    'train.class_weighting': ('none', 'inverse_freq', 'sqrt_inverse_freq'),
    'train.early_stopping.mode': ('max', 'min'),
}


def _get(config, dotted: str):
  for key in dotted.split('.'):
    config = config[key]
  return config


def validate(config: ml_collections.ConfigDict):
  for key, allowed in CHOICES.items():
    value = _get(config, key)
    if value not in allowed:
      raise ValueError(f'config.{key}={value!r} is not one of {", ".join(allowed)}.')
  monitor = config.train.early_stopping.monitor
  if not monitor.startswith('val_'):
    raise ValueError(f'config.train.early_stopping.monitor={monitor!r}: monitor a validation '
                     'metric such as val_balanced_accuracy, val_macro_f1 or val_loss.')
  for key in ('batch_size', 'num_epochs', 'eval_batch_size', 'log_every_steps'):
    if config.train[key] <= 0:
      raise ValueError(f'config.train.{key}={config.train[key]} must be positive.')
  if not 0 <= config.train.get('ema_decay', 0.0) < 1:
    raise ValueError(f'config.train.ema_decay={config.train.ema_decay} must be in [0, 1): the '
                     "moving average's decay per step (0.995 averages about the last 200 steps), "
                     'or 0 for none.')
  tau = config.train.get('logit_adjustment', 0.0)
  if tau < 0:
    raise ValueError(f'config.train.logit_adjustment={tau} must be >= 0 (1 is the usual '
                     'logit-adjusted loss; 0 turns it off).')
  if tau and config.train.balanced_sampling:
    raise ValueError(f'config.train.logit_adjustment={tau} with train.balanced_sampling=True '
                     'evens the classes twice (the adjusted loss is for a stream drawn as the data '
                     'comes): set train.balanced_sampling=False.')
  if config.train.checkpoint_every_steps < 0:
    raise ValueError(f'config.train.checkpoint_every_steps={config.train.checkpoint_every_steps}: '
                     'use 0 (once per epoch) or a positive number of steps.')
  # Sizes too: a negative image_size would otherwise pass, start training and fail deep inside
  # augmentation, after the workdir is written.
  for key in ('image_size', 'prepared_size', 'synthetic_examples', 'shades_of_grey_power'):
    if key in config.data and config.data[key] <= 0:
      raise ValueError(f'config.data.{key}={config.data[key]} must be positive.')
  if config.data.eval_image_size < 0:
    raise ValueError(f'config.data.eval_image_size={config.data.eval_image_size} must be 0 (the '
                     'training size, data.image_size) or a positive size.')
  if config.data.get('training_short_side', 0) < 0:
    raise ValueError(f'config.data.training_short_side={config.data.training_short_side} must be '
                     '0 (measured from the training images) or a positive number of pixels.')
  if 'num_workers' in config.data and config.data.num_workers < 0:
    raise ValueError(f'config.data.num_workers={config.data.num_workers} must be 0 (read in the '
                     'main process) or more.')
  _check_camera_augmentation(config.data.augment)
  _check_sources(config.data)
  _check_folds(config.data)
  _check_metadata(config.model)


def _check_metadata(model: ml_collections.ConfigDict):
  """The fields themselves; whether the dataset has their columns is checked when it is opened."""
  patient_metadata.check_fields(tuple(model.get('metadata', ())))
  dropout = model.get('metadata_dropout', 0.0)
  if not 0 <= dropout < 1:
    raise ValueError(f'config.model.metadata_dropout={dropout} must be in [0, 1): the chance that '
                     "an image's metadata is hidden in training.")


def _check_folds(data: ml_collections.ConfigDict):
  """Whether each class has enough lesions for the folds is checked when the dataset is split."""
  folds, fold = data.get('folds', 0), data.get('fold', 0)
  if folds:
    splits.check_fold(folds, fold)
  elif fold:
    raise ValueError(f'config.data.fold={fold} without config.data.folds: set '
                     'config.data.folds=K as well, or leave fold at 0.')


def _check_sources(data: ml_collections.ConfigDict):
  """The keys that join extra datasets (skinjax/data/combined.py); whether those are prepared, and
  their classes, is checked when they are opened."""
  extra_train = tuple(data.extra_train)
  if any(not isinstance(name, str) or not name for name in extra_train):
    raise ValueError(f'config.data.extra_train={extra_train}: give the names of prepared datasets, '
                     "e.g. ('isic2019_bcn_msk',).")
  if not 0 <= data.extra_val_fraction < 1:
    raise ValueError(f'config.data.extra_val_fraction={data.extra_val_fraction} must be in [0, 1): '
                     "the share of each extra dataset's groups that validates.")
  weights = tuple(data.source_weights)
  if weights and extra_train and len(weights) != 1 + len(extra_train):
    raise ValueError(f'config.data.source_weights={weights} gives {len(weights)} weights for '
                     f'{1 + len(extra_train)} sources: one for config.data.dataset, then one for '
                     'each of config.data.extra_train, or () for none.')
  if any(not weight > 0 for weight in weights):
    raise ValueError(f'config.data.source_weights={weights}: each weight must be positive (it sets '
                     "how often that source's images are drawn); remove a source from "
                     'config.data.extra_train instead of weighting it 0.')
  for name, target in dict(data.label_map).items():
    if not isinstance(target, str):
      raise ValueError(f'config.data.label_map[{name!r}]={target!r}: map each class to a class '
                       "name, or to '' to leave its images out.")


# The largest sensible value of each camera augmentation: a factor range [1-x, 1+x] must stay
# positive, and a hue turn of half the circle already reaches every hue.
_CAMERA_LIMITS = {'gamma': 0.99, 'hue': 0.5, 'channel_gain': 0.99, 'sharpness': 0.99}


def _check_camera_augmentation(augment: ml_collections.ConfigDict):
  for key in augment_lib.CAMERA_KEYS:
    value, limit = augment[key], _CAMERA_LIMITS.get(key)
    if value < 0 or (limit is not None and value > limit):
      bounds = f'between 0 (off) and {limit}' if limit is not None else '0 (off) or more'
      raise ValueError(f'config.data.augment.{key}={value} must be {bounds}.')
  powers = tuple(augment.shades_of_grey_powers)
  if powers and (len(powers) != 2 or not 0 < powers[0] <= powers[1]):
    raise ValueError(f'config.data.augment.shades_of_grey_powers={powers}: give (low, high) with '
                     '0 < low <= high, or () to keep config.data.shades_of_grey_power.')
  if not 0 <= augment.camera_probability <= 1:
    raise ValueError(f'config.data.augment.camera_probability={augment.camera_probability} must be '
                     'between 0 and 1 (1: every training view).')


def check_init(config: ml_collections.ConfigDict):
  """Fails before any work when `config.model.init` names weights that are not there.

  Only existence is checked here; reading and fitting the weights happens when the model is built.
  """
  init, arch = config.model.init, config.model.arch
  if init == 'scratch':
    return
  pretrained.check_init(arch, init)


def config_warnings(config: ml_collections.ConfigDict) -> list[str]:
  """One line per setting that is valid but probably not meant, each saying how to fix it."""
  found = (_frozen_for_the_whole_run(config), _eval_size_far_from_training_size(config),
           _powers_without_colour_constancy(config), _source_keys_without_extras(config))
  return [line for line in found if line]


def _frozen_for_the_whole_run(config) -> str | None:
  """Phase 2 never starts: the backbone never trains, so a transfer run measures only its head."""
  frozen, epochs = config.train.freeze_backbone_epochs, config.train.num_epochs
  # unfreeze=0 trains no backbone block in phase 2 either: a head-only run is then what was asked.
  if frozen <= 0 or frozen < epochs or str(config.train.unfreeze) == '0':
    return None
  return (f'warning: config.train.freeze_backbone_epochs={frozen} >= config.train.num_epochs='
          f'{epochs}: the backbone stays frozen for the whole run and never trains, only the head '
          f'does. Raise num_epochs above {frozen} or lower freeze_backbone_epochs below {epochs}.')


def _eval_size_far_from_training_size(config) -> str | None:
  """Evaluation views far from the training size, e.g. a recipe's eval_image_size kept after
  --config.data.image_size changed: the model is then scored at a scale it was never tuned for."""
  train_size, eval_size = config.data.image_size, config.data.eval_image_size
  if eval_size == 0 or train_size <= eval_size <= 2 * train_size:  # 0: the training size
    return None
  how = 'smaller than' if eval_size < train_size else 'more than twice'
  return (f'warning: config.data.eval_image_size={eval_size} is {how} the training size '
          f'config.data.image_size={train_size}, so validation and test views are at another '
          f'scale than training. Set eval_image_size=0 (the training size) or between '
          f'{train_size} and {2 * train_size}.')


def _powers_without_colour_constancy(config) -> str | None:
  """Random Shades of Grey powers drawn for a correction that is off do nothing."""
  powers = tuple(config.data.augment.shades_of_grey_powers)
  if not powers or config.data.colour_constancy != 'none':
    return None
  return (f'warning: config.data.augment.shades_of_grey_powers={powers} has no effect while '
          "config.data.colour_constancy='none'. Set colour_constancy='shades_of_grey' or "
          'shades_of_grey_powers=().')


def _source_keys_without_extras(config) -> str | None:
  """A recipe's label_map or source weights kept while extra_train=() (its ablation without extra
  data, say) do nothing: worth a line, not a stop."""
  data = config.data
  if tuple(data.extra_train):
    return None
  unused = [key for key in ('label_map', 'extra_val_fraction', 'source_weights') if data[key]]
  if not unused:
    return None
  return (f'warning: config.data.{", ".join(unused)} set, but config.data.extra_train=() names no '
          'extra dataset for them to apply to; they are ignored.')


def tta_warning(config: ml_collections.ConfigDict, tta_mode: str) -> str | None:
  """One line when `tta_mode` is not the one the run's recipe validated (None if it is, or if the
  recipe names none): the recipe's figures then do not describe what is being measured."""
  validated = config.get('eval', {}).get('validated_tta', '')
  if not validated or tta_mode == validated:
    return None
  return (f'warning: --tta={tta_mode}, but this run\'s recipe was validated with '
          f'--tta={validated}; its published figures are for {validated}.')

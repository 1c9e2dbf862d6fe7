"""Optimiser, learning-rate schedules and the parameter groups that decide what trains.

Every parameter gets one of three labels, and `optax.multi_transform` routes it:
  head      the classifier head, trained in both phases at the base learning rate;
  backbone  the part of the backbone that phase 2 unfreezes, at lr * backbone_lr_multiplier;
  frozen    never trained (`config.train.unfreeze` = N keeps all but the last N blocks here).
During phase 1 (`freeze_backbone_epochs`) the backbone group is routed to `optax.set_to_zero`, so
XLA prunes the backbone's gradient computation entirely.
"""

import jax
import ml_collections
import optax

HEAD, BACKBONE, FROZEN = 'head', 'backbone', 'frozen'


def trainable_backbone_groups(layer_groups: list[str], unfreeze: str) -> set[str]:
  """Names of the backbone's top-level groups that phase 2 trains."""
  if str(unfreeze) == 'all':
    return set(layer_groups)
  try:
    last_n = int(unfreeze)
  except ValueError:
    raise ValueError(f"config.train.unfreeze={unfreeze!r}: use 'all' or a number of last "
                     f'backbone blocks (the backbone has {len(layer_groups)}).') from None
  if not 0 <= last_n <= len(layer_groups):
    raise ValueError(f'config.train.unfreeze={last_n}: the backbone has {len(layer_groups)} blocks.')
  return set(layer_groups[len(layer_groups) - last_n:])


def param_labels(params, trainable_groups: set[str]):
  """A pytree like `params` holding HEAD, BACKBONE or FROZEN for each leaf."""
  def label(path, _):
    top = path[0].key
    if top == 'head':
      return HEAD
    if top != 'backbone':
      raise ValueError(f'Unexpected top-level parameter {top!r}: expected backbone or head.')
    return BACKBONE if path[1].key in trainable_groups else FROZEN
  return jax.tree_util.tree_map_with_path(label, params)


def decay_mask(params):
  """Weight decay on kernels only: not on biases, BatchNorm scales or other vectors."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, 'key', None) == 'kernel' for k in path), params)


def schedule(config: ml_collections.ConfigDict, base_lr: float, total_steps: int,
             steps_per_epoch: int) -> optax.Schedule:
  warmup = min(int(config.train.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  if config.train.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, max(total_steps, warmup + 1))
  if config.train.schedule == 'constant':
    return optax.join_schedules(
        [optax.linear_schedule(0.0, base_lr, warmup), optax.constant_schedule(base_lr)], [warmup])
  raise ValueError(f"config.train.schedule={config.train.schedule!r}: use 'cosine' or 'constant'.")


def _base_optimizer(config: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
  train = config.train
  if train.optimizer == 'adamw':
    return optax.adamw(lr, weight_decay=train.weight_decay, mask=decay_mask)
  if train.optimizer == 'sgd':
    return optax.chain(optax.add_decayed_weights(train.weight_decay, mask=decay_mask),
                       optax.sgd(lr, momentum=train.momentum, nesterov=train.nesterov))
  raise ValueError(f"config.train.optimizer={train.optimizer!r}: use 'adamw' or 'sgd'.")


def make_optimizer(config: ml_collections.ConfigDict, params, *, trainable_groups: set[str],
                   phase: int, steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimiser for phase 1 (head only) or phase 2 (head and unfrozen backbone).

  Each group's schedule counts its own steps, so the backbone warms up again when it unfreezes
  and its cosine spans the rest of the run.
  """
  total = config.train.num_epochs * steps_per_epoch
  frozen_steps = config.train.freeze_backbone_epochs * steps_per_epoch
  head_lr = schedule(config, config.train.learning_rate, total, steps_per_epoch)
  backbone_lr = schedule(config, config.train.learning_rate * config.train.backbone_lr_multiplier,
                         total - frozen_steps, steps_per_epoch)
  transforms = {
      HEAD: _base_optimizer(config, head_lr),
      BACKBONE: _base_optimizer(config, backbone_lr) if phase == 2 else optax.set_to_zero(),
      FROZEN: optax.set_to_zero(),
  }
  tx = optax.multi_transform(transforms, param_labels(params, trainable_groups))
  if config.train.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm), tx)
  return tx


def enter_phase_two(phase_one_state, phase_two_tx: optax.GradientTransformation, params):
  """Phase 2's optimiser state: the head keeps its moments, the backbone starts fresh."""
  state = phase_two_tx.init(params)

  def carry_head(new, old):
    inner = dict(new.inner_states)
    inner[HEAD] = old.inner_states[HEAD]
    return new._replace(inner_states=inner)

  if isinstance(state, tuple) and not hasattr(state, 'inner_states'):  # chained with clipping
    return (phase_one_state[0], carry_head(state[1], phase_one_state[1]))
  return carry_head(state, phase_one_state)

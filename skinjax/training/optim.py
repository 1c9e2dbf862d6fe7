"""Optimiser, learning-rate schedules and the plan of what trains when.

Every parameter gets one of three labels, and `optax.multi_transform` routes it:
  head      the classifier head (and its metadata branch), trained in both phases at the base
            learning rate;
  backbone  the part of the backbone that phase 2 unfreezes, at lr * backbone_lr_multiplier;
  frozen    never trained (`config.train.unfreeze` = N keeps all but the last N blocks here).
The optimiser state has one layout from step 0 to the end, so a checkpoint of any step restores
into it whatever the config says about phases. During phase 1 (`freeze_backbone_epochs`) the
backbone group's state is held as initialised: its moments stay zero and its schedule's count 0,
so phase 2 starts it fresh, warming up again over the rest of the run.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

HEAD, BACKBONE, FROZEN = 'head', 'backbone', 'frozen'
# The classifier's layers that start from scratch: both train with the HEAD label.
NEW_LAYERS = ('head', 'metadata_branch')

@dataclasses.dataclass(frozen=True)
class PhasePlan:
  """Which parameters train at each step, and in which mode each module runs.

  The one definition of "frozen": a backbone group outside `trainable_groups` is FROZEN; it never
  trains and always runs in inference mode. Phase 1 (steps before `phase_two_start`) trains the
  head only, with the whole backbone in inference mode (frozen BatchNorm statistics, as Keras
  runs a non-trainable BatchNorm). Phase 2 trains the head and the BACKBONE groups.
  """
  labels: Any  # a pytree like the params: HEAD, BACKBONE or FROZEN per leaf
  trainable_groups: frozenset[str]
  phase_two_start: int

  @classmethod
  def create(cls, model: nnx.Module, unfreeze: str, phase_two_start: int) -> 'PhasePlan':
    """The plan for `model` (abstract is enough): its backbone groups and `config.train.unfreeze`."""
    groups = frozenset(trainable_backbone_groups(model.backbone.layer_groups(), unfreeze))
    return cls(param_labels(nnx.state(model, nnx.Param), groups), groups, phase_two_start)

  def phase(self, step: int) -> int:
    return 1 if step < self.phase_two_start else 2

  def trainable(self, phase: int):
    """A pytree like the params: whether the phase's step may change each leaf."""
    allowed = {1: {HEAD}, 2: {HEAD, BACKBONE}}[phase]
    return jax.tree.map(lambda label: label in allowed, self.labels)

  def set_mode(self, model: nnx.Module, phase: int | str) -> nnx.Module:
    """Modes for phase 1, 2 or 'eval' (everything in inference mode), set in place.

    Frozen groups stay in inference mode in phase 2 too: in training mode they would normalise
    with batch statistics, and the train step, which writes back every non-Param variable, would
    let their moving statistics drift although no optimiser touches them. Their drop-connect
    stays off too, as in phase 1.
    """
    if phase == 'eval':
      model.eval()
      return model
    model.train()
    if phase == 1:
      model.backbone.eval()
      return model
    for name, child in nnx.iter_children(model.backbone):
      if name not in self.trainable_groups:
        child.eval()
    return model


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
    if top in NEW_LAYERS:
      return HEAD
    if top != 'backbone':
      raise ValueError(f'Unexpected top-level parameter {top!r}: expected backbone, '
                       f'{" or ".join(NEW_LAYERS)}.')
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


def _held(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` with the same state, which its updates leave untouched: no change to the params."""
  def update(updates, state, params=None):
    del params
    return jax.tree.map(jnp.zeros_like, updates), state
  return optax.GradientTransformation(inner.init, update)


def make_optimizer(config: ml_collections.ConfigDict, plan: PhasePlan, *, steps_per_epoch: int,
                   phase: int = 2) -> optax.GradientTransformation:
  """The run's optimiser, as phase `phase`'s train step applies it.

  Both phases share one `init` and so one state tree; phase 1 holds the backbone group's state.
  Each group's schedule counts its own steps, so the backbone warms up when it unfreezes and its
  cosine spans the rest of the run.
  """
  total = config.train.num_epochs * steps_per_epoch
  head_lr = schedule(config, config.train.learning_rate, total, steps_per_epoch)
  backbone_lr = schedule(config, config.train.learning_rate * config.train.backbone_lr_multiplier,
                         total - plan.phase_two_start, steps_per_epoch)
  backbone = _base_optimizer(config, backbone_lr)
  transforms = {
      HEAD: _base_optimizer(config, head_lr),
      BACKBONE: _held(backbone) if phase == 1 else backbone,
      FROZEN: optax.set_to_zero(),
  }
  tx = optax.multi_transform(transforms, plan.labels)
  if config.train.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.train.grad_clip_norm), tx)
  return tx


def without_backbone_state(opt_state):
  """The state as the trainer before the single layout saved it in phase 1: no backbone moments.

  Checkpoints of that trainer taken in phase 1 restore through this layout; `with_backbone_state`
  then puts back the fresh backbone state, which phase 1 holds untouched anyway.
  """
  return _replace_backbone_state(opt_state, optax.EmptyState())


def with_backbone_state(opt_state, fresh_state):
  return _replace_backbone_state(opt_state, _split(fresh_state)[1].inner_states[BACKBONE])


def _split(opt_state):
  """(clipping state or None, multi_transform state)."""
  if isinstance(opt_state, tuple) and not hasattr(opt_state, 'inner_states'):
    return opt_state  # chained behind gradient clipping
  return None, opt_state


def _replace_backbone_state(opt_state, backbone_state):
  clipping, multi = _split(opt_state)
  masked = multi.inner_states[BACKBONE]  # multi_transform wraps each group's state in a mask
  if not isinstance(backbone_state, type(masked)):
    backbone_state = masked._replace(inner_state=backbone_state)
  multi = multi._replace(inner_states={**multi.inner_states, BACKBONE: backbone_state})
  return multi if clipping is None else (clipping, multi)

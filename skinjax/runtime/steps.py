"""The pure, jit-compiled train and eval steps.

The model lives as (graphdef, params, rest): `params` are the nnx.Param leaves, `rest` everything
else (BatchNorm statistics, constant buffers). Phase 1, phase 2 and evaluation differ only in the
graphdef (BatchNorm/dropout modes are static attributes), so they share one state layout.
`ema`, with config.train.ema_decay > 0, is the moving average of the model's variables that
validation, the best checkpoint and every evaluation use; the step itself trains `params`.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  rest: nnx.State
  opt_state: Any
  ema: Any = None  # {'params': ..., 'rest': ...} with config.train.ema_decay > 0, else None

  def evaluated(self) -> tuple[nnx.State, nnx.State]:
    """(params, rest) that validation scores and the best checkpoint keeps."""
    if self.ema is None:
      return self.params, self.rest
    return self.ema['params'], self.ema['rest']


def start_ema(params, rest) -> dict:
  """The moving average's first value: copies of the variables, not the arrays themselves (the
  train step donates the state, and no two of its leaves may share a buffer)."""
  return jax.tree.map(jnp.copy, {'params': params, 'rest': rest})


def ema_update(ema, params, rest, steps_done: jax.Array, decay: float):
  """One step of the moving average of every float variable (BatchNorm statistics too, which
  belong to the averaged weights). As TensorFlow's ExponentialMovingAverage with num_updates,
  the decay is min(decay, (1 + n) / (10 + n)) after n steps, so the first steps are not held
  near the initial weights."""
  n = steps_done.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))

  def average(old, new):
    if not jnp.issubdtype(new.dtype, jnp.inexact):
      return new
    return (d * old + (1.0 - d) * new).astype(new.dtype)

  return jax.tree.map(average, ema, {'params': params, 'rest': rest})


def weighted_cross_entropy(logits, labels, mask, class_weights, label_smoothing: float,
                           logit_offsets: jax.Array | None = None):
  """Mean over real (mask=1) examples of class-weighted, optionally smoothed cross-entropy.

  `logit_offsets` (per class) are added to the logits inside the loss only: with tau * log(prior)
  this is the logit-adjusted loss (Menon et al., 2021), whose plain logits then estimate the
  balanced posterior, the one that balanced accuracy rewards."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  logits = logits.astype(jnp.float32)
  if logit_offsets is not None:
    logits = logits + logit_offsets
  losses = optax.softmax_cross_entropy(logits, targets)
  weights = class_weights[labels] * mask
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(mask), 1.0)


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, *,
                    normalise: Callable, trainable_mask, class_weights: jax.Array,
                    label_smoothing: float, dropout_key: jax.Array,
                    skip_nonfinite: bool = False, ema_decay: float = 0.0,
                    logit_offsets: jax.Array | None = None) -> Callable:
  """A train step for one phase. `trainable_mask` marks the params this phase may change.

  With `skip_nonfinite`, a step whose loss or gradients are not finite changes nothing (params,
  optimiser state and BatchNorm statistics keep their values; the step counter still advances,
  so the data and dropout stay in step) and reports `skipped=1`. optax.apply_if_finite would
  guard only the update, not the BatchNorm statistics the bad forward pass produced.
  With `ema_decay` > 0 the state carries the variables' moving average (`start_ema`), updated
  after every step. `logit_offsets`: see weighted_cross_entropy.
  """

  def train_step(state: TrainState, batch: dict):
    # Dropout keys derive from the step, so a resumed run draws exactly the same masks.
    step_key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params, rest):
      rngs = nnx.Rngs(dropout=step_key)
      # stop_gradient on frozen params lets XLA drop their whole backward pass.
      params = jax.tree.map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                            trainable_mask)
      model = nnx.merge(graphdef, params, rest, copy=True)
      logits = model(normalise(batch['image']), batch.get('metadata'), rngs=rngs)
      loss = weighted_cross_entropy(logits, batch['label'], batch['mask'], class_weights,
                                    label_smoothing, logit_offsets)
      return loss, (logits, nnx.state(model, nnx.Not(nnx.Param)))

    (loss, (logits, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.rest)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ema = None
    if ema_decay:
      ema = ema_update(state.ema, params, rest, state.step, ema_decay)
    skipped = jnp.zeros((), jnp.int32)
    if skip_nonfinite:
      finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
      keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
      params, rest, opt_state, ema = jax.tree.map(
          keep, (params, rest, opt_state, ema), (state.params, state.rest, state.opt_state, state.ema))
      skipped = 1 - finite.astype(jnp.int32)
    correct = (jnp.argmax(logits, -1) == batch['label']) * batch['mask']
    metrics = {'loss': loss, 'accuracy': jnp.sum(correct) / jnp.maximum(jnp.sum(batch['mask']), 1),
               'grad_norm': grad_norm, 'skipped': skipped}
    return TrainState(state.step + 1, params, rest, opt_state, ema), metrics

  return train_step


def make_predict_step(graphdef: nnx.GraphDef, *, normalise: Callable) -> Callable:
  """Softmax probabilities in inference mode (graphdef from a model in `.eval()`); `metadata`
  only for a model that takes patient metadata."""

  def predict_step(params, rest, images, metadata=None):
    model = nnx.merge(graphdef, params, rest, copy=True)
    return jax.nn.softmax(model(normalise(images), metadata).astype(jnp.float32), axis=-1)

  return predict_step

"""The train step's phases and parameter groups, and 1 device against 8."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skinjax.data import sources
from skinjax.models import preprocessing
from skinjax.models import registry
from skinjax.runtime import steps
from skinjax.training import optim
from skinjax.training import train
from tests.helpers import FAST_COMPILE, tiny_config


def build(mode):
  # Flax's initialisers draw with partitionable threefry, JAX's default, whose 4-D kernel shapes
  # XLA:CPU compiles for seconds each (12 s for this model, 3 s without); what these tests check
  # does not depend on the initial values.
  with jax.threefry_partitionable(False):
    model = registry.build_classifier('small_cnn', num_classes=7, dropout_rate=0.2,
                                      rngs=nnx.Rngs(0), widths=(8, 16))
  model.train()
  if mode == 'phase1':
    model.backbone.eval()
  return model


def run_steps(phase, unfreeze='all', num_steps=3, ema_decay=0.0, on_step=None):
  """((initial params, rest), final state) of `num_steps` steps; `on_step(state)` sees each."""
  config = tiny_config(**{'train.unfreeze': unfreeze, 'train.freeze_backbone_epochs': 1,
                          'train.num_epochs': 3, 'train.warmup_epochs': 0.0})
  model = build('phase2')
  plan = optim.PhasePlan.create(model, unfreeze, phase_two_start=5)
  plan.set_mode(model, phase)  # the modes the trainer compiles each phase with
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  tx = optim.make_optimizer(config, plan, steps_per_epoch=5, phase=phase)
  step = jax.jit(steps.make_train_step(
      graphdef, tx, normalise=lambda x: preprocessing.normalize(x, 'unit'),
      trainable_mask=plan.trainable(phase),
      class_weights=jnp.ones(7), label_smoothing=0.1, dropout_key=jax.random.key(0),
      ema_decay=ema_decay))
  ema = steps.start_ema(params, rest) if ema_decay else None
  state = steps.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params), ema)
  rng = np.random.default_rng(0)
  for _ in range(num_steps):
    batch = {'image': rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8),
             'label': rng.integers(0, 7, 8).astype(np.int32), 'mask': np.ones(8, np.float32)}
    state, metrics = step(state, batch)
    if on_step:
      on_step(jax.device_get(state))
  assert np.isfinite(metrics['loss'])
  return (params, rest), state


def changed(before, after):
  return {jax.tree_util.keystr(path): not np.array_equal(a, b) for (path, a), b in
          zip(jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after))}


def test_phase_one_trains_only_the_head_and_freezes_batchnorm():
  (params, rest), state = run_steps(phase=1)
  param_changes, stat_changes = changed(params, state.params), changed(rest, state.rest)
  assert all(v for k, v in param_changes.items() if k.startswith("['head']"))
  assert not any(v for k, v in param_changes.items() if k.startswith("['backbone']"))
  assert stat_changes and not any(stat_changes.values())  # BatchNorm in inference mode


def test_phase_two_unfreezes_only_the_last_blocks():
  (params, rest), state = run_steps(phase=2, unfreeze='1')
  param_changes, stat_changes = changed(params, state.params), changed(rest, state.rest)
  assert not any(v for k, v in param_changes.items() if k.startswith("['backbone']['stage1']"))
  assert all(v for k, v in param_changes.items() if k.startswith("['backbone']['stage2']"))
  assert all(v for k, v in param_changes.items() if k.startswith("['head']"))
  # The frozen block runs in inference mode: its moving statistics stay bit-identical
  # while the unfrozen block's move in training mode.
  assert not any(v for k, v in stat_changes.items() if k.startswith("['backbone']['stage1']"))
  assert all(v for k, v in stat_changes.items() if k.startswith("['backbone']['stage2']"))


def test_moving_average_follows_its_definition_and_leaves_training_alone():
  """The average after each step, recomputed in NumPy from the weights and statistics the steps
  produced, with TensorFlow's num_updates warmup; the weights are those of a run without it."""
  seen = []
  (params, rest), state = run_steps(phase=2, num_steps=4, ema_decay=0.2, on_step=seen.append)
  _, plain = run_steps(phase=2, num_steps=4)
  for a, b in zip(jax.tree.leaves((state.params, state.rest)), jax.tree.leaves((plain.params, plain.rest))):
    np.testing.assert_array_equal(a, b)
  expected = [np.asarray(x, np.float64) for x in jax.tree.leaves((params, rest))]
  for n, after in enumerate(seen):
    decay = min(0.2, (1 + n) / (10 + n))  # 0.1, 0.18, then the set 0.2
    expected = [decay * e + (1 - decay) * np.asarray(x, np.float64)
                for e, x in zip(expected, jax.tree.leaves((after.params, after.rest)))]
  averaged = jax.tree.leaves((state.ema['params'], state.ema['rest']))
  assert len(averaged) == len(expected)
  for got, want in zip(averaged, expected):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert all(a is b for a, b in zip(state.evaluated(), (state.ema['params'], state.ema['rest'])))
  assert all(a is b for a, b in zip(plain.evaluated(), (plain.params, plain.rest)))


def test_phase_two_runs_frozen_blocks_in_inference_mode():
  model = build('phase2')
  optim.PhasePlan.create(model, '1', phase_two_start=0).set_mode(model, 2)
  stage1, stage2 = model.backbone.stage1, model.backbone.stage2
  assert stage1.bn1.use_running_average and stage1.bn2.use_running_average
  assert not stage2.bn1.use_running_average and not stage2.bn2.use_running_average
  assert not model.head_dropout.deterministic
  optim.PhasePlan.create(model, 'all', phase_two_start=0).set_mode(model, 2)
  assert not stage1.bn1.use_running_average


def test_unfreeze_rejects_bad_values():
  with pytest.raises(ValueError, match='unfreeze'):
    optim.trainable_backbone_groups(['a', 'b'], 'some')
  with pytest.raises(ValueError, match='has 2 blocks'):
    optim.trainable_backbone_groups(['a', 'b'], '3')


def test_weight_decay_applies_to_kernels_only():
  params = {'conv': {'kernel': jnp.ones((3, 3)), 'bias': jnp.ones(3)}, 'bn': {'scale': jnp.ones(3)}}
  assert optim.decay_mask(params) == {'conv': {'kernel': True, 'bias': False}, 'bn': {'scale': False}}


def test_phase_one_holds_the_backbone_state_in_the_one_layout():
  """Phase 1 moves the head's moments and count; the backbone's stay as initialised."""
  config = tiny_config(**{'train.freeze_backbone_epochs': 1, 'train.num_epochs': 3})
  model = build('phase2')
  params = nnx.state(model, nnx.Param)
  plan = optim.PhasePlan.create(model, 'all', phase_two_start=5)
  tx1, tx2 = (optim.make_optimizer(config, plan, steps_per_epoch=5, phase=p) for p in (1, 2))
  fresh = tx1.init(params)
  assert jax.tree.structure(fresh) == jax.tree.structure(tx2.init(params))
  grads = jax.tree.map(jnp.ones_like, params)
  updates, after = tx1.update(grads, fresh, params)
  group = lambda s, name: s[1].inner_states[name].inner_state  # noqa: E731
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(group(after, optim.BACKBONE)),
                                                  jax.tree.leaves(group(fresh, optim.BACKBONE))))
  assert int(group(after, optim.HEAD)[0].count) == 1
  assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(group(after, optim.HEAD)[0].mu),
                                                      jax.tree.leaves(group(fresh, optim.HEAD)[0].mu)))
  assert not any(np.any(u) for u in jax.tree.leaves(updates['backbone']))


@pytest.mark.parametrize('mode', ['inverse_freq', 'sqrt_inverse_freq'])
def test_class_weights_average_one_over_examples(mode):
  labels = np.array([0] * 90 + [1] * 9 + [2])
  weights = sources.class_weights(labels, 3, mode)
  assert np.mean(weights[labels]) == pytest.approx(1.0)
  ratio = weights[2] / weights[0]
  assert ratio == pytest.approx(90.0 if mode == 'inverse_freq' else np.sqrt(90.0), rel=1e-5)
  assert np.all(sources.class_weights(labels, 3, 'none') == 1)


def test_logit_adjusted_loss_is_cross_entropy_of_the_shifted_logits():
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((6, 4)).astype(np.float32)
  labels = np.array([0, 1, 2, 3, 1, 0])
  mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
  class_weights = np.array([1.0, 2.0, 0.5, 1.5], np.float32)
  offsets = np.log([0.7, 0.2, 0.08, 0.02]).astype(np.float32)
  shifted = logits.astype(np.float64) + offsets
  log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  expected = -(log_softmax[np.arange(6), labels] * class_weights[labels] * mask).sum() / mask.sum()
  loss = steps.weighted_cross_entropy(logits, labels, mask, class_weights, 0.0, offsets)
  assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_logit_adjusted_loss_learns_the_balanced_posterior():
  # The property that makes it fit balanced accuracy: trained on labels drawn with prior pi and
  # no evidence, plain cross-entropy learns logits whose softmax is pi, the adjusted loss (tau 1)
  # learns equal logits: its model's own prediction is balanced.
  prior = np.array([0.7, 0.2, 0.08, 0.02])
  labels = np.repeat(np.arange(4), (prior * 1000).astype(int))
  mask, weights = np.ones(len(labels), np.float32), jnp.ones(4)

  def fitted(offsets):
    loss = lambda bias: steps.weighted_cross_entropy(  # noqa: E731
        jnp.broadcast_to(bias, (len(labels), 4)), labels, mask, weights, 0.0, offsets)
    grad = jax.jit(jax.grad(loss))
    bias = jnp.zeros(4)
    for _ in range(2000):
      bias = bias - 2.0 * grad(bias)
    return np.asarray(jax.nn.softmax(bias))

  np.testing.assert_allclose(fitted(None), prior, atol=2e-3)
  np.testing.assert_allclose(fitted(jnp.log(prior)), np.full(4, 0.25), atol=2e-3)


END_TO_END_OVERRIDES = {'train.optimizer': 'sgd', 'train.learning_rate': 0.02}

_END_TO_END_SCRIPT = """
import json, sys
import jax
from skinjax.training import train
from tests.helpers import tiny_config
assert jax.device_count() == int(sys.argv[2]), jax.devices()
train.train_and_evaluate(tiny_config(**json.loads(sys.argv[3])), sys.argv[1])
"""

# One process with 8 host devices runs the same jitted step on a 1-device and an 8-device mesh from
# the same state, step after step (teacher forcing), and prints the largest differences.
_SAME_STATE_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from skinjax.models import preprocessing, registry
from skinjax.runtime import sharding
from skinjax.runtime import steps
from skinjax.training import optim
from tests.helpers import tiny_config
config = tiny_config(**{'train.optimizer': 'sgd', 'train.learning_rate': 0.05, 'train.warmup_epochs': 0.0})
model = registry.build_classifier('small_cnn', num_classes=7, dropout_rate=0.2, rngs=nnx.Rngs(0))
model.train()
graphdef, params, rest = nnx.split(model, nnx.Param, ...)
tx = optim.make_optimizer(config, optim.PhasePlan.create(model, 'all', phase_two_start=0),
                          steps_per_epoch=10)
step_fn = steps.make_train_step(
    graphdef, tx, normalise=lambda x: preprocessing.normalize(x, 'unit'),
    trainable_mask=jax.tree.map(lambda _: True, params), class_weights=jnp.ones(7),
    label_smoothing=0.1, dropout_key=jax.random.key(0))
meshes = {n: sharding.data_mesh(jax.devices()[:n]) for n in (1, 8)}
state = steps.TrainState(jnp.zeros((), jnp.int32), params, rest, tx.init(params))
rng = np.random.default_rng(0)
worst_loss = worst_param = 0.0
for _ in range(6):
  batch = {'image': rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8),
           'label': rng.integers(0, 7, 16).astype(np.int32), 'mask': np.ones(16, np.float32)}
  out = {}
  for n, mesh in meshes.items():
    jitted = jax.jit(step_fn, out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))
    out[n] = jax.device_get(jitted(jax.device_put(state, sharding.replicated(mesh)),
                                   jax.device_put(batch, sharding.batch_sharding(mesh))))
  worst_loss = max(worst_loss, abs(out[1][1]['loss'] - out[8][1]['loss']) / out[1][1]['loss'])
  # Relative difference of each parameter tensor's update. It is not ~1e-7 everywhere: when two
  # inputs of a max-pool window differ by rounding only, the two compilations may route that
  # window's gradient to different pixels (one of them zeroed by the ReLU before the pool),
  # which moves upstream updates by ~0.3%, and by 1.05% in one step of the BatchNorm bias right
  # before a pool (the others stay below 2e-4).
  worst_param = max(worst_param, max(
      float(np.linalg.norm(a - b) / np.linalg.norm(a - before)) for a, b, before in zip(
          jax.tree.leaves(out[1][0].params), jax.tree.leaves(out[8][0].params),
          jax.tree.leaves(state.params))))
  state = out[1][0]
print(worst_loss, worst_param)
"""


def _run_with_devices(devices, *args, xla_flags=''):
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {xla_flags}'.strip())
  result = subprocess.run([sys.executable, '-c', *args], env=env, check=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True)
  return result.stdout


def test_one_and_eight_devices_compute_the_same_step():
  """From the same state and batch, the sharded step equals the single-device one to rounding."""
  # Both meshes' steps compile in that process alike, at -O0: 28 -> 15 CPU-s.
  worst_loss, worst_param = map(float, _run_with_devices(8, _SAME_STATE_SCRIPT,
                                                         xla_flags=FAST_COMPILE).split()[-2:])
  assert worst_loss < 1e-6
  assert worst_param < 2e-2


def test_one_and_eight_devices_give_the_same_losses(tmp_path):
  """The whole trainer, pipeline included, on 1 and on 8 devices.

  Both runs assemble the same global batches and compute the same function, but float reductions
  run in another order. Training on 16-image batches amplifies those 1e-7 differences step after
  step (about 1e-4 by step 5, several % by step 15), so only the first steps are compared
  tightly; the same-state test above checks every step.
  """
  # At -O0 (another rounding, well inside the tolerance below): its 8-device programs are never
  # in the compilation cache.
  _run_with_devices(8, _END_TO_END_SCRIPT, str(tmp_path / 'devices8'), '8',
                    json.dumps(END_TO_END_OVERRIDES), xla_flags=FAST_COMPILE)
  # One device: this process (no process start; the session's runs compiled the same model).
  assert jax.device_count() == 1, jax.devices()
  train.train_and_evaluate(tiny_config(**END_TO_END_OVERRIDES), str(tmp_path / 'devices1'))
  losses = {}
  for devices in (1, 8):
    records = [json.loads(line) for line in
               (tmp_path / f'devices{devices}' / 'metrics.jsonl').read_text().splitlines()]
    losses[devices] = [loss for r in records for loss in r.get('step_losses', [])]
  assert len(losses[1]) == len(losses[8]) > 10
  np.testing.assert_allclose(losses[8][:3], losses[1][:3], rtol=1e-5)
  assert np.all(np.isfinite(losses[8]))

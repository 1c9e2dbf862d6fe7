"""One optimiser layout from step 0 to the end: what trains when, and resumes across its changes."""

import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from skinjax.models.run_model import RunModel
from skinjax.runtime import checkpoint as ckpt
from skinjax.runtime import sharding
from skinjax.training import train
from tests.golden import record_two_phase_runs as recorded
from tests.helpers import GOLDEN, narrow_small_cnn, tiny_config, unpack_golden
from tests.test_train import assert_same_run, interrupt_after_checkpoint


@pytest.fixture(scope='module')
def two_phase_runs(tmp_path_factory):
  """{name: (workdir, metrics)} of the runs of tests/golden/two_phase_runs.json, trained today.

  Each unfreezes at step 9 (freeze_backbone_epochs=1) and ends at step 27.
  """
  root = tmp_path_factory.mktemp('two_phase')
  return {name: (root / name, train.train_and_evaluate(tiny_config(**overrides), str(root / name)))
          for name, overrides in recorded.RUNS.items()}


def test_two_phase_runs_train_as_the_two_layout_optimiser_did(two_phase_runs):
  """Losses and final parameters of tests/golden/two_phase_runs.json (see its recording script for
  what recorded it).

  On the machine, kernels and XLA level that recorded it the values must be bit-identical;
  elsewhere float32 rounding differs, so they must agree to float32 accuracy, as far as Adam on
  these tiny runs lets rounding differences stay small.
  """
  golden = json.loads((GOLDEN / 'two_phase_runs.json').read_text())
  exact = golden['machine'] == recorded.machine()
  for name, expected in golden['runs'].items():
    got = recorded.run_summary(two_phase_runs[name][0])
    if exact:
      assert got == expected, name
      continue
    # Rounding differences compound over the 27 steps: 3e-4 by the last ones at -O0, and 1.5e-3
    # in a parameter sum near 0.2 (sums of values of both signs).
    np.testing.assert_allclose(got['losses'], expected['losses'], rtol=1e-3, err_msg=name)
    np.testing.assert_allclose([p['sum'] for p in got['params'].values()],
                               [p['sum'] for p in expected['params'].values()],
                               rtol=1e-3, atol=5e-3, err_msg=name)


def test_resume_at_the_unfreezing_step_matches_uninterrupted_run(two_phase_runs, tmp_path,
                                                                 monkeypatch):
  """The checkpoint at the end of phase 1 holds the phase-1 optimiser layout."""
  name = 'adamw_clipped_all'
  config = tiny_config(**recorded.RUNS[name])
  interrupt_after_checkpoint(config, tmp_path, monkeypatch, step=9)
  resumed = train.train_and_evaluate(config, str(tmp_path))
  reference_dir, reference = two_phase_runs[name]
  assert_same_run(tmp_path, reference_dir, resumed, reference)


def test_resume_with_a_longer_frozen_phase_and_more_epochs(two_phase_runs, tmp_path):
  """A finished phase-2 run resumed with allow_config_change into a longer phase 1.

  The trainer used to infer the checkpoint's optimiser layout from the new config (phase 1 here)
  and stopped with Orbax's tree-mismatch error; with one layout the run goes on.
  """
  workdir = shutil.copytree(two_phase_runs['adamw_clipped_all'][0], tmp_path / 'run')
  longer = tiny_config(**{**recorded.RUNS['adamw_clipped_all'], 'train.freeze_backbone_epochs': 3,
                          'train.num_epochs': 4, 'train.allow_config_change': True})
  metrics = train.train_and_evaluate(longer, str(workdir))
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert max(r['step'] for r in records) == 4 * 9
  assert metrics['epochs_run'] == 4


def test_frozen_blocks_keep_their_batch_statistics(two_phase_runs):
  """unfreeze=1: the blocks left frozen run in inference mode, as Keras runs a non-trainable
  BatchNorm, so their moving statistics end the run bit-identical to their initial values (through
  phase 1, all of the backbone frozen, and phase 2); only the unfrozen last block's statistics
  move."""
  name = 'sgd_unclipped_last_block'
  config = tiny_config(**recorded.RUNS[name])
  run_model = RunModel(config, num_classes=7)

  def init_model():  # as the trainer makes its initial model: its program is in the cache
    _, params, rest = nnx.split(run_model.build(), nnx.Param, ...)
    return params, rest

  replicated = sharding.replicated(sharding.data_mesh())
  params, initial = jax.jit(init_model, out_shardings=replicated)()
  _, _, trained = ckpt.RunCheckpoints(two_phase_runs[name][0]).restore_model(
      'latest', ckpt.abstract(params, replicated), ckpt.abstract(initial, replicated))
  last = run_model.abstract.backbone.layer_groups()[-1]
  same = {jax.tree_util.keystr(path): np.array_equal(a, b) for (path, a), b in zip(
      jax.tree_util.tree_flatten_with_path(initial)[0], jax.tree.leaves(trained))}
  frozen = {k: v for k, v in same.items() if f"['{last}']" not in k}
  unfrozen = {k: v for k, v in same.items() if f"['{last}']" in k}
  assert frozen and all(frozen.values()), [k for k, v in frozen.items() if not v]
  assert unfrozen and not any(unfrozen.values())


@pytest.fixture(scope='module')
def legacy_runs(tmp_path_factory):
  """Work directories the two-layout trainer left after a checkpoint in phase 1 and in phase 2."""
  return unpack_golden('legacy_runs.tar.gz', tmp_path_factory.mktemp('legacy')) / 'legacy_runs'


@pytest.mark.parametrize('phase', ['phase1', 'phase2'])
def test_checkpoints_of_the_two_layout_trainer_resume(legacy_runs, tmp_path, phase):
  workdir = tmp_path / phase
  shutil.copytree(legacy_runs / phase, workdir)
  config = tiny_config(**recorded.LEGACY_RUNS[phase])
  with narrow_small_cnn():
    resumed = train.train_and_evaluate(config, str(workdir))
    uninterrupted = train.train_and_evaluate(config, str(tmp_path / 'uninterrupted'))
  losses = recorded.run_summary(workdir)['losses']
  expected = recorded.run_summary(tmp_path / 'uninterrupted')['losses']
  assert len(losses) == len(expected) == 27
  np.testing.assert_allclose(losses, expected, rtol=2e-4)
  assert resumed['balanced_accuracy'] == pytest.approx(uninterrupted['balanced_accuracy'])

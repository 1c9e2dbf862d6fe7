"""One optimiser layout from step 0 to the end: what trains when, and resumes across its changes."""

import json
import shutil

import numpy as np
import pytest

from skinjax.training import train
from tests.golden import record_two_phase_runs as recorded
from tests.helpers import GOLDEN, narrow_small_cnn, tiny_config, unpack_golden



def test_resume_with_a_longer_frozen_phase_and_more_epochs(tmp_path):
  """A finished phase-2 run resumed with allow_config_change into a longer phase 1.

  The trainer used to infer the checkpoint's optimiser layout from the new config (phase 1 here)
  and stopped with Orbax's tree-mismatch error; with one layout the run goes on.
  """
  train.train_and_evaluate(tiny_config(**{'train.freeze_backbone_epochs': 1}), str(tmp_path))
  longer = tiny_config(**{'train.freeze_backbone_epochs': 2, 'train.num_epochs': 4,
                          'train.allow_config_change': True})
  metrics = train.train_and_evaluate(longer, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert max(r['step'] for r in records) == 4 * 9
  assert metrics['epochs_run'] == 4


def test_two_phase_runs_train_as_the_two_layout_optimiser_did():
  """Losses and final parameters of tests/golden/two_phase_runs.json (recorded before the change).

  On the machine and kernels that recorded it the values must be bit-identical; elsewhere float32
  rounding of other CPUs' kernels differs, so they must agree to float32 accuracy.
  """
  golden = json.loads((GOLDEN / 'two_phase_runs.json').read_text())
  exact = golden['machine'] == recorded.machine()
  runs = recorded.record_runs()
  for name, expected in golden['runs'].items():
    got = runs[name]
    if exact:
      assert got == expected, name
      continue
    np.testing.assert_allclose(got['losses'], expected['losses'], rtol=2e-4, err_msg=name)
    np.testing.assert_allclose([p['sum'] for p in got['params'].values()],
                               [p['sum'] for p in expected['params'].values()],
                               rtol=1e-3, atol=1e-4, err_msg=name)


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

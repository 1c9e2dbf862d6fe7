"""Valid configs that silently train or evaluate something else: one warning line each, recorded
in W/config.json, and the run goes on."""

import importlib
import json
import pkgutil

import pytest

import configs
from skinjax.data import handle
from skinjax.evaluation import inference
from skinjax.training import config_checks
from skinjax.training import train
from skinjax.training import workdir as workdir_lib
from tests.helpers import tiny_config


def warnings_for(**overrides):
  return config_checks.config_warnings(tiny_config(**overrides))


@pytest.mark.parametrize('frozen, epochs', [(3, 3), (5, 3), (1, 1)])
def test_a_backbone_frozen_for_every_epoch_is_warned_about(frozen, epochs):
  found = warnings_for(**{'train.freeze_backbone_epochs': frozen, 'train.num_epochs': epochs})
  assert len(found) == 1
  assert found[0].startswith('warning: config.train.freeze_backbone_epochs=')
  assert (f'Raise num_epochs above {frozen} or lower freeze_backbone_epochs below {epochs}'
          in found[0])


@pytest.mark.parametrize('overrides', [
    {'train.freeze_backbone_epochs': 0, 'train.num_epochs': 1},  # nothing frozen
    {'train.freeze_backbone_epochs': 2, 'train.num_epochs': 3},  # one epoch trains the backbone
    # unfreeze=0: phase 2 would train no backbone block either; head-only is what was asked.
    {'train.freeze_backbone_epochs': 3, 'train.num_epochs': 3, 'train.unfreeze': '0'},
])
def test_a_backbone_that_trains_or_is_never_meant_to_is_not_warned_about(overrides):
  assert warnings_for(**overrides) == []


@pytest.mark.parametrize('train_size, eval_size, how', [
    (64, 176, 'more than twice'),  # a recipe's 176 kept after --config.data.image_size=64
    (64, 129, 'more than twice'),
    (128, 96, 'smaller than'),
])
def test_evaluation_views_far_from_the_training_size_are_warned_about(train_size, eval_size, how):
  found = warnings_for(**{'data.image_size': train_size, 'data.eval_image_size': eval_size})
  assert found == [f'warning: config.data.eval_image_size={eval_size} is {how} the training size '
                   f'config.data.image_size={train_size}, so validation and test views are at '
                   f'another scale than training. Set eval_image_size=0 (the training size) or '
                   f'between {train_size} and {2 * train_size}.']


@pytest.mark.parametrize('eval_size', [0, 64, 100, 128])  # 0: the training size
def test_evaluation_views_from_the_training_size_to_twice_it_are_not_warned_about(eval_size):
  assert warnings_for(**{'data.image_size': 64, 'data.eval_image_size': eval_size}) == []


def test_both_misconfigurations_give_two_lines():
  found = warnings_for(**{'train.freeze_backbone_epochs': 2, 'train.num_epochs': 2,
                          'data.image_size': 64, 'data.eval_image_size': 176})
  assert [line.split('=')[0] for line in found] == [
      'warning: config.train.freeze_backbone_epochs', 'warning: config.data.eval_image_size']


def test_no_shipped_recipe_warns():
  for module in pkgutil.iter_modules(configs.__path__):
    config = importlib.import_module(f'configs.{module.name}').get_config()
    assert config_checks.config_warnings(config) == [], module.name


def test_a_warned_run_completes_records_its_warning_and_resumes(tmp_path, capsys):
  """The cheapest misconfiguration to train: one epoch, all of it with the backbone frozen."""
  config = tiny_config(**{'train.freeze_backbone_epochs': 1, 'train.num_epochs': 1})
  expected = config_checks.config_warnings(config)
  assert len(expected) == 1
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics['epochs_run'] == 1 and (tmp_path / 'report' / 'metrics.json').is_file()
  assert expected[0] in capsys.readouterr().err.splitlines()
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved[workdir_lib.WARNINGS_KEY] == expected

  # The saved warnings are no part of the config a resume compares: the same config resumes (here
  # into the finished run's report), and a change names only the changed key.
  assert train.train_and_evaluate(config, str(tmp_path)) == metrics
  fingerprint = handle.PreparedDataset.open(config).fingerprint
  fixed = tiny_config(**{'train.freeze_backbone_epochs': 1, 'train.num_epochs': 2})
  with pytest.raises(workdir_lib.WorkdirError) as refused:
    workdir_lib.check_resume(tmp_path, fixed, fingerprint, has_checkpoint=True)
  assert 'train.num_epochs: 1 -> 2' in str(refused.value) and 'warning' not in str(refused.value)
  fixed.train.allow_config_change = True
  workdir_lib.check_resume(tmp_path, fixed, fingerprint, has_checkpoint=True)

  # Evaluation and prediction read the run's config.json with the key in it.
  loaded = inference.load_run(tmp_path, 'best')
  assert loaded.config.train.freeze_backbone_epochs == 1

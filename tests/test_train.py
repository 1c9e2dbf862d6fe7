"""End to end: train_and_evaluate on the synthetic source, resume, and bad-input refusals."""

import csv
import json
import pathlib
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from sklearn import metrics as skm

from skinjax.data import handle
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import evaluate
from skinjax.evaluation import inference
from skinjax.runtime import checkpoint as ckpt
from skinjax.training import progress
from skinjax.training import train
from tests.helpers import tiny_config


def read_jsonl(path):
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def step_losses(workdir):
  """{step: loss} from the per-step training records of metrics.jsonl."""
  losses = {}
  for record in read_jsonl(workdir / 'metrics.jsonl'):
    for offset, loss in enumerate(reversed(record.get('step_losses', []))):
      losses[record['step'] - offset] = loss
  return losses


@pytest.fixture
def finished_run(tiny_run):
  return tiny_run  # (workdir, metrics) of one finished tiny_config() run, shared by test files


def test_report_files_and_metrics_match_sklearn(finished_run):
  workdir, metrics = finished_run
  report = workdir / 'report'
  for name in ('classification_report.txt', 'metrics.json', 'predictions.csv'):
    assert (report / name).exists(), name
  assert not list(report.glob('*.png')), 'tiny_config() turns the figures off'
  with open(report / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == metrics['num_examples'] and len({r['image_id'] for r in rows}) == len(rows)
  labels = np.array([CLASS_NAMES.index(r['label']) for r in rows])
  probs = np.array([[float(r[f'prob_{c}']) for c in CLASS_NAMES] for r in rows])
  preds = probs.argmax(1)
  assert [CLASS_NAMES[p] for p in preds] == [r['pred'] for r in rows]
  assert metrics['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, preds), abs=1e-9)
  assert metrics['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-9)
  assert metrics['macro_f1'] == pytest.approx(skm.f1_score(labels, preds, average='macro'), abs=1e-9)
  aucs = [skm.roc_auc_score(labels == c, probs[:, c], ) for c in range(7) if 0 < (labels == c).sum()]
  assert metrics['macro_auc'] == pytest.approx(np.mean(aucs), abs=1e-5)
  assert list(metrics['per_class'])[0] == 'mel'
  assert set(json.loads((report / 'metrics.json').read_text())) >= {
      'accuracy', 'balanced_accuracy', 'macro_f1', 'weighted_f1', 'macro_auc', 'per_class'}
  assert 'mel' in (report / 'classification_report.txt').read_text()


def test_logs_config_and_tensorboard(finished_run):
  workdir, _ = finished_run
  records = read_jsonl(workdir / 'metrics.jsonl')
  epochs = [r for r in records if 'val_balanced_accuracy' in r]
  assert [r['epoch'] for r in epochs] == [1, 2]
  assert all(np.isfinite(r['train_loss']) for r in records)
  assert json.loads((workdir / 'config.json').read_text())['model']['arch'] == 'small_cnn'
  assert list((workdir / 'tensorboard').glob('events.out.tfevents.*'))


def test_finished_run_reprints_report(finished_run, capsys):
  workdir, metrics = finished_run
  again = train.train_and_evaluate(tiny_config(), str(workdir))
  assert again == metrics
  assert 'has finished' in capsys.readouterr().out


def interrupt_after_checkpoint(config, workdir, monkeypatch, step):
  """Runs `config` in `workdir` until its `latest` checkpoint of `step` is saved, then stops it."""
  original_save = ckpt.RunCheckpoints.save_latest

  def save_then_stop(self, saved_step, *args, **kwargs):
    original_save(self, saved_step, *args, **kwargs)
    if saved_step == step:
      raise KeyboardInterrupt(f'simulated kill after the checkpoint of step {step}')

  monkeypatch.setattr(ckpt.RunCheckpoints, 'save_latest', save_then_stop)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(config, str(workdir))
  monkeypatch.setattr(ckpt.RunCheckpoints, 'save_latest', original_save)


def assert_same_run(workdir, reference_dir, resumed, reference):
  losses, expected = step_losses(workdir), step_losses(reference_dir)
  assert sorted(losses) == sorted(expected)
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [expected[s] for s in sorted(expected)], rtol=1e-5)
  assert resumed['balanced_accuracy'] == pytest.approx(reference['balanced_accuracy'])


SLOW_VALIDATION_S = 2.0
STOPPED_AT = 12  # after the mid-epoch checkpoint of step 12, in the second epoch


@pytest.fixture(scope='module')
def resumed_run(tmp_path_factory):
  """(workdir, metrics) of tiny_config()'s run, with a checkpoint every 4 steps, stopped after the
  one of STOPPED_AT and rerun to the end with the report's figures on (a change that needs no
  allow_config_change). The first process's validation (after step 9) takes SLOW_VALIDATION_S
  longer."""
  workdir = tmp_path_factory.mktemp('resumed')
  config = tiny_config(**{'train.checkpoint_every_steps': 4})
  original_predict = evaluate.predict

  def slow_predict(*args, **kwargs):
    time.sleep(SLOW_VALIDATION_S)
    return original_predict(*args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, 'predict', slow_predict)
    interrupt_after_checkpoint(config, workdir, patch, step=STOPPED_AT)
  config.eval.figures = True
  return workdir, train.train_and_evaluate(config, str(workdir))


def test_resume_after_interruption_matches_uninterrupted_run(resumed_run, finished_run):
  """The rerun, from the middle of an epoch, must reproduce every loss of the uninterrupted run."""
  workdir, resumed = resumed_run
  logged_steps = [r['step'] for r in read_jsonl(workdir / 'metrics.jsonl') if 'step_losses' in r]
  assert logged_steps.count(1) == logged_steps.count(STOPPED_AT) == 1  # resumed there, not earlier
  assert_same_run(workdir, finished_run[0], resumed, finished_run[1])
  for name in ('confusion_matrix.png', 'roc.png', 'reliability.png'):
    assert (workdir / 'report' / name).stat().st_size > 0, name


@pytest.fixture(scope='module')
def averaged_runs(tmp_path_factory):
  """{'whole': (workdir, metrics), 'resumed': ...} of tiny_config() with a moving average of the
  weights: one uninterrupted, one stopped after the checkpoint of STOPPED_AT and rerun; 'stopped':
  a copy of the second as it was when stopped."""
  config = tiny_config(**{'train.ema_decay': 0.8, 'train.checkpoint_every_steps': 4})
  runs = {}
  for name in ('whole', 'resumed'):
    workdir = tmp_path_factory.mktemp(name)
    if name == 'resumed':
      with pytest.MonkeyPatch.context() as patch:
        interrupt_after_checkpoint(config, workdir, patch, step=STOPPED_AT)
      runs['stopped'] = shutil.copytree(workdir, tmp_path_factory.mktemp('stopped') / 'run')
    runs[name] = workdir, train.train_and_evaluate(config, str(workdir))
  return runs


def latest_has_ema(workdir):
  checkpoints = ckpt.RunCheckpoints(workdir)
  try:
    return checkpoints.latest_has_ema()
  finally:
    checkpoints.wait_and_close()


def restored_models(workdir, config):
  from skinjax.models.run_model import RunModel
  from skinjax.runtime import sharding
  params, rest = RunModel(config, num_classes=7).abstract_state
  replicated = sharding.replicated(sharding.data_mesh())
  checkpoints = ckpt.RunCheckpoints(workdir)
  return {which: checkpoints.restore_model(which, ckpt.abstract(params, replicated),
                                           ckpt.abstract(rest, replicated))
          for which in ('best', 'latest')}


def test_moving_average_is_validated_kept_and_resumed_exactly(averaged_runs, finished_run):
  """The average changes nothing in training (the same losses as the run without it), but it is
  what validation scores and `best` keeps; a resumed run ends with the same average."""
  (workdir, metrics), (resumed_dir, resumed) = averaged_runs['whole'], averaged_runs['resumed']
  losses, plain = step_losses(workdir), step_losses(finished_run[0])
  np.testing.assert_allclose([losses[s] for s in sorted(plain)], [plain[s] for s in sorted(plain)],
                             rtol=1e-5)
  val = [r['val_loss'] for r in read_jsonl(workdir / 'metrics.jsonl') if 'val_loss' in r]
  plain_val = [r['val_loss'] for r in read_jsonl(finished_run[0] / 'metrics.jsonl') if 'val_loss' in r]
  assert len(val) == len(plain_val) and not np.allclose(val, plain_val, rtol=1e-3)
  assert_same_run(resumed_dir, workdir, resumed, metrics)
  config = tiny_config()
  models = {name: restored_models(d, config) for name, d in (('whole', workdir),
                                                             ('resumed', resumed_dir))}
  for a, b in zip(jax.tree.leaves(models['whole']), jax.tree.leaves(models['resumed'])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # `latest` restores the average too, not the weights the step trained.
  step = ckpt.RunCheckpoints(workdir).latest_step()
  saved = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / 'latest' / str(step) / 'state')
  latest_params = jax.tree.leaves(models['whole']['latest'][1])
  assert len(latest_params) == len(jax.tree.leaves(saved['ema']['params']))
  for a, b in zip(jax.tree.leaves(saved['ema']['params']), latest_params):
    assert np.array_equal(a, b)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(saved['ema']['params']),
                                                       jax.tree.leaves(saved['params'])))


def test_a_moving_average_turned_off_or_on_midway_resumes(averaged_runs, copy_of_tiny_run):
  """With allow_config_change, a run resumes where it stopped: switched off, the saved average is
  dropped; switched on (here with a third epoch for a finished run), the run keeps one."""
  off = tiny_config(**{'train.allow_config_change': True})
  on = tiny_config(**{'train.allow_config_change': True, 'train.ema_decay': 0.8,
                      'train.num_epochs': 3})
  for workdir, config, first_step, has_ema in ((averaged_runs['stopped'], off, STOPPED_AT + 1, False),
                                              (copy_of_tiny_run, on, 19, True)):
    assert latest_has_ema(workdir) != has_ema
    assert np.isfinite(train.train_and_evaluate(config, str(workdir))['loss'])
    assert latest_has_ema(workdir) == has_ema
    logged_steps = [r['step'] for r in read_jsonl(workdir / 'metrics.jsonl') if 'step_losses' in r]
    assert logged_steps.count(first_step) == 1  # resumed where it stopped


def test_a_run_records_its_training_images_short_side_and_resumes_with_it(tmp_path, capsys):
  """data.match_training_resolution: the median shorter side of the training images is measured
  at the start and recorded in config.json, where evaluation reads it; the run reopens as is."""
  config = tiny_config(**{'train.num_epochs': 1, 'data.match_training_resolution': True})
  dataset = handle.PreparedDataset.open(config)
  sides = [min(dataset.source[int(i)]['image'].shape[:2]) for i in dataset.splits['train']]
  train.train_and_evaluate(config, str(tmp_path))
  recorded = json.loads((tmp_path / 'config.json').read_text())['data']['training_short_side']
  assert recorded == np.median(sides) == 48  # the synthetic images are 64x48
  assert config.data.training_short_side == 0  # the caller's config is left as written
  assert 'shorter side above 48 px' in capsys.readouterr().out
  train.train_and_evaluate(config, str(tmp_path))  # finished: reopened, no config change found
  assert inference.load_run(tmp_path).eval_view.source_side == 48


def test_unknown_architecture_lists_valid_ones(tmp_path):
  with pytest.raises(ValueError, match=r'valid architectures: .*small_cnn.*efficientnetb0'):
    train.train_and_evaluate(tiny_config(**{'model.arch': 'resnet51'}), str(tmp_path))


def test_workdir_of_another_architecture_is_refused(finished_run):
  workdir, _ = finished_run
  with pytest.raises(ValueError, match='holds checkpoints of a small_cnn run'):
    train.train_and_evaluate(tiny_config(**{'model.arch': 'efficientnetb0'}), str(workdir))


@pytest.mark.parametrize('key, value', [('data.split', 'by_patient'),
                                        ('train.class_weighting', 'inverse'),
                                        ('model.dtype', 'float16'),
                                        ('train.ema_decay', 1.0),
                                        ('train.logit_adjustment', -1.0)])
def test_invalid_choices_name_the_key(tmp_path, key, value):
  with pytest.raises(ValueError, match=f'config.{key}'):
    train.train_and_evaluate(tiny_config(**{key: value}), str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_logit_adjustment_needs_the_natural_class_prior(tmp_path):
  config = tiny_config(**{'train.logit_adjustment': 1.0, 'train.balanced_sampling': True})
  with pytest.raises(ValueError, match='set train.balanced_sampling=False'):
    train.train_and_evaluate(config, str(tmp_path))


def test_logit_adjusted_run_trains_on_the_shifted_logits(finished_run, tmp_path):
  # Same data, model and seed as finished_run: the first step's loss is the adjusted one.
  config = tiny_config(**{'train.logit_adjustment': 1.0, 'train.num_epochs': 1})
  assert np.isfinite(train.train_and_evaluate(config, str(tmp_path))['loss'])
  first = lambda workdir: next(r for r in read_jsonl(workdir / 'metrics.jsonl')  # noqa: E731
                               if 'step_losses' in r)['step_losses'][0]
  assert first(tmp_path) != pytest.approx(first(finished_run[0]), rel=1e-3)


def test_bfloat16_compute_trains_with_float32_parameters(tmp_path):
  metrics = train.train_and_evaluate(
      tiny_config(**{'model.dtype': 'bfloat16', 'train.num_epochs': 1}), str(tmp_path))
  assert np.isfinite(metrics['loss'])
  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert all(np.isfinite(r['train_loss']) for r in records)
  step = ckpt.RunCheckpoints(tmp_path).latest_step()
  saved = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / 'latest' / str(step) / 'state')
  assert {leaf.dtype for leaf in jax.tree.leaves(saved['params'])} == {np.dtype('float32')}


def test_best_and_latest_model_restore_at_their_steps(finished_run):
  from skinjax.models.run_model import RunModel
  workdir, metrics = finished_run
  params, _ = RunModel(tiny_config(), num_classes=7).abstract_state
  checkpoints = ckpt.RunCheckpoints(workdir)
  restored = restored_models(workdir, tiny_config())
  assert restored['best'][0] == metrics['best_step']
  last_epoch = [r for r in read_jsonl(workdir / 'metrics.jsonl') if 'val_loss' in r][-1]
  assert restored['latest'][0] == checkpoints.latest_step() == last_epoch['step']
  for _, p, r in restored.values():
    assert jax.tree.structure(p) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((p, r)))


def test_throughput_times_training_steps_only(resumed_run):
  """images_per_sec leaves out validation and checkpoints, and is not 0.0 in the first record
  after a start or a resume. Validation was made SLOW_VALIDATION_S slower: a record of one
  16-image step that counted it would show under 8 img/s."""
  workdir, _ = resumed_run
  records = {r['step']: r for r in read_jsonl(workdir / 'metrics.jsonl') if 'images_per_sec' in r}
  after_start, after_validation, after_resume = 1, 10, STOPPED_AT + 1
  # The first step of a start or a resume also compiles the train step, so these two are low.
  assert records[after_start]['images_per_sec'] > 0
  assert records[after_resume]['images_per_sec'] > 0
  batch_size = tiny_config().train.batch_size  # log_every_steps=1: one step per record
  assert batch_size / records[after_validation]['images_per_sec'] < SLOW_VALIDATION_S / 4


def test_progress_bar_clock_stops_while_paused(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, 'monotonic', lambda: now[0])
  bar = progress.ProgressBar(total_steps=10, batch_size=8, stream=open('/dev/null', 'w'),
                             start_step=4)
  now[0] += 2.0
  assert bar.update(5, 1, 0.5) == pytest.approx(4.0)  # measured from the start (a resume) on
  bar.pause()
  now[0] += 50.0  # validation, checkpoints
  bar.resume()
  now[0] += 1.0
  assert bar.update(6, 2, 0.5) == pytest.approx(8.0)


def test_early_stopping_reads_a_missing_validation_figure_as_no_evidence():
  """A validation split without melanoma has no melanoma recall (None): the epoch neither beats
  a measured best nor counts against it, and the first epoch still becomes the best."""
  rules = tiny_config().train.early_stopping
  rules.monitor, rules.patience = 'val_melanoma_recall', 1
  state = {'best_value': None, 'best_epoch': 0, 'best_step': 0, 'bad_epochs': 0, 'stopped': False}
  assert train._update_early_stopping(state, {'val_melanoma_recall': None, 'epoch': 1, 'step': 5},
                                      rules)
  assert train._update_early_stopping(state, {'val_melanoma_recall': 0.4, 'epoch': 2, 'step': 10},
                                      rules)
  assert not train._update_early_stopping(
      state, {'val_melanoma_recall': None, 'epoch': 3, 'step': 15}, rules)
  assert state['best_value'] == 0.4 and state['best_epoch'] == 2 and not state['stopped']

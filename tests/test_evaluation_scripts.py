"""scripts/evaluate.py, predict.py, compare.py and run_study.py on tiny runs of the synthetic source.

One tiny run is trained once per module, in OUT/tiny_a so that the study finds it finished; the
study then resumes a copy of it, stopped before its report, for a third epoch by subprocess, as a
user's command would. The two make the comparison's rows.
"""

import csv
import dataclasses
import json
import os
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from sklearn import metrics as skm

from skinjax.data import augment
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import compare
from skinjax.evaluation import inference
from skinjax.evaluation import metrics as eval_metrics
from skinjax.models import registry
from skinjax.runtime import checkpoint as ckpt
from skinjax.training import train
from tests.helpers import tiny_config
from tests.test_eval_metrics import assert_isic_submission
from tests.test_external import write_ham_csv, write_isic_csv, write_jpegs
from tests.test_isic_scorer import official_score, write_truth

REPO = pathlib.Path(__file__).resolve().parents[1]
# The development part of the ISIC 2018 Task 3 test set (images/ and the official ground truth);
# .ci/run sets it to ../shared/data/isic2018_test_dev.
ISIC2018_DIR = os.environ.get('SKINJAX_ISIC2018_DIR')
TINY_B = "tiny_config(**{'train.num_epochs': 3})"


@pytest.fixture(scope='module')
def study_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('study')


@pytest.fixture(scope='module')
def trained(study_dir, tiny_run):
  """A copy of the shared tiny run, as one of the study's runs: these tests evaluate into it."""
  return shutil.copytree(tiny_run[0], study_dir / 'tiny_a')


@pytest.fixture(scope='module')
def run(trained):
  return inference.load_run(trained, 'best')


@pytest.fixture(scope='module')
def external_set(tmp_path_factory):
  """14 JPEGs of assorted sizes, two per class, labelled in both CSV formats."""
  folder = tmp_path_factory.mktemp('external')
  ids = [f'ISIC_{i:07d}' for i in range(14)]
  dx = [CLASS_NAMES[i % 7] for i in range(14)]
  write_jpegs(folder / 'images', ids, seed=5)
  write_ham_csv(folder / 'ham.csv', ids, dx, lesions=[f'L{i // 2}' for i in range(14)])
  write_isic_csv(folder / 'isic.csv', ids, dx)
  return folder, ids, np.array([CLASS_NAMES.index(d) for d in dx])


def read_predictions(path):
  with open(path) as f:
    rows = list(csv.DictReader(f))
  labels = np.array([CLASS_NAMES.index(r['label']) for r in rows])
  probs = np.array([[float(r[f'prob_{c}']) for c in CLASS_NAMES] for r in rows])
  return rows, labels, probs


def script(python, name, *args, cwd=REPO):
  return python.run([REPO / 'scripts' / name, *args], cwd=cwd)


def model_probs(run, views):
  """The model applied by hand to uint8 views, outside the evaluation pipeline."""
  forward = jax.jit(lambda x: jax.nn.softmax(run.model()(run.normalise(x))))
  return np.asarray(forward(np.stack(views)))


# ------------------------------------------------------------------ evaluate


def test_test_split_evaluation_reproduces_the_report_and_sklearn(run, trained):
  data = checkpoint_eval.run_split(run, 'test')
  out = checkpoint_eval.default_out_dir(run, data, 'none')
  assert out == trained / 'eval' / 'test-best'
  # As evaluate.py on a run whose config.json has the report's figures on (the tiny run's are off).
  config = run.config.copy_and_resolve_references()
  config.eval.figures = True
  metrics = checkpoint_eval.evaluate_checkpoint(dataclasses.replace(run, config=config), data, out)
  reported = json.loads((trained / 'report' / 'metrics.json').read_text())
  assert metrics['step'] == reported['best_step'] and metrics['split'] == 'test'
  for key in ('accuracy', 'balanced_accuracy', 'macro_f1', 'macro_auc', 'melanoma_recall'):
    assert metrics[key] == pytest.approx(reported[key], abs=1e-6), key
  for name in ('classification_report.txt', 'metrics.json', 'confusion_matrix.png', 'roc.png',
               'reliability.png', 'predictions.csv', 'predictions_isic.csv'):
    assert (out / name).stat().st_size > 0, name

  rows, labels, probs = read_predictions(out / 'predictions.csv')
  _, _, reported_probs = read_predictions(trained / 'report' / 'predictions.csv')
  np.testing.assert_allclose(probs, reported_probs, atol=2e-6)
  preds = probs.argmax(1)
  mel = CLASS_NAMES.index('mel')
  assert metrics['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert metrics['balanced_accuracy'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  assert metrics['macro_f1'] == pytest.approx(
      skm.f1_score(labels, preds, labels=range(7), average='macro', zero_division=0))
  assert metrics['weighted_f1'] == pytest.approx(
      skm.f1_score(labels, preds, labels=range(7), average='weighted', zero_division=0))
  assert metrics['melanoma_recall'] == pytest.approx(skm.recall_score(labels == mel, preds == mel))
  aucs = [skm.roc_auc_score(labels == c, probs[:, c]) for c in range(7) if (labels == c).any()]
  assert metrics['macro_auc'] == pytest.approx(np.mean(aucs), abs=1e-5)
  renormalised = probs / probs.sum(1, keepdims=True)  # predictions.csv rounds to 6 decimals
  assert metrics['loss'] == pytest.approx(skm.log_loss(labels, renormalised, labels=range(7)),
                                          abs=1e-4)
  precision, recall, f1, support = skm.precision_recall_fscore_support(
      labels, preds, labels=range(7), zero_division=0)
  for i, name in enumerate(CLASS_NAMES):
    assert metrics['per_class'][name]['recall'] == pytest.approx(recall[i])
    assert metrics['per_class'][name]['precision'] == pytest.approx(precision[i])
    assert metrics['per_class'][name]['support'] == support[i]
  # Intervals by lesion: the split's lesion ids are in predictions.csv and drive the resampling.
  lesions = np.array([r['lesion_id'] for r in rows])
  # probs are predictions.csv's, rounded to 6 decimals: a tie more or less may move the AUC.
  ci = eval_metrics.bootstrap_intervals(labels, preds, 7, mel, lesions, probs=probs)
  assert {key: metrics['ci'][key] for key in eval_metrics.CI_METRICS} == {
      key: ci[key] for key in eval_metrics.CI_METRICS}
  np.testing.assert_allclose(metrics['ci']['macro_auc'], ci['macro_auc'], atol=1e-3)
  assert metrics['ci']['unit'] == 'lesion'
  assert_isic_submission(out / 'predictions_isic.csv', [r['image_id'] for r in rows], probs)


@pytest.mark.parametrize('csv_name, labels_format, unit', [('ham.csv', 'metadata', 'lesion'),
                                                           ('isic.csv', 'isic2018', 'image')])
def test_external_set_in_either_csv_format(run, external_set, tmp_path, csv_name, labels_format,
                                           unit):
  folder, ids, labels = external_set
  data = checkpoint_eval.external_set(folder / 'images', folder / csv_name, run)
  assert checkpoint_eval.default_out_dir(run, data, 'none').name == (
      f"external-{folder.name}-{data.description['set_hash']}-best")
  metrics = checkpoint_eval.evaluate_checkpoint(run, data, tmp_path)
  assert metrics['labels_format'] == labels_format and metrics['ci']['unit'] == unit
  assert metrics['num_examples'] == 14
  rows, read_labels, probs = read_predictions(tmp_path / 'predictions.csv')
  assert [r['image_id'] for r in rows] == ids and (read_labels == labels).all()
  assert metrics['balanced_accuracy'] == pytest.approx(
      skm.balanced_accuracy_score(labels, probs.argmax(1)))
  # Images of any size go through the run's own evaluation resize and normalisation.
  size, mode = run.config.data.image_size, run.config.data.resize
  views = [augment.eval_resize(augment.to_pil((folder / 'images' / f'{i}.jpg').read_bytes(), size),
                               size, mode) for i in ids[:4]]
  np.testing.assert_allclose(probs[:4], model_probs(run, views), atol=2e-6)
  assert_isic_submission(tmp_path / 'predictions_isic.csv', ids, probs)


def test_flip_tta_averages_the_softmax_over_flipped_images(run, external_set, tmp_path):
  folder, ids, _ = external_set
  data = checkpoint_eval.external_set(folder / 'images', folder / 'isic.csv', run)
  assert checkpoint_eval.default_out_dir(run, data, 'flip').name == (
      f"external-{folder.name}-{data.description['set_hash']}-best-tta_flip")
  metrics = checkpoint_eval.evaluate_checkpoint(run, data, tmp_path, tta_mode='flip')
  assert metrics['tta'] == 'flip'
  _, _, probs = read_predictions(tmp_path / 'predictions.csv')
  size, mode = run.config.data.image_size, run.config.data.resize
  view = augment.eval_resize(augment.to_pil((folder / 'images' / f'{ids[1]}.jpg').read_bytes(), size),
                             size, mode)
  flipped = [view, view[:, ::-1], view[::-1], view[::-1, ::-1]]
  np.testing.assert_allclose(probs[1], model_probs(run, flipped).mean(0), atol=2e-6)


def scored_with(run, config, folder, out):
  """(the run with `config`, the external set in `folder`, its predicted probabilities)."""
  changed = dataclasses.replace(run, config=config)
  data = checkpoint_eval.external_set(folder / 'images', folder / 'isic.csv', changed)
  checkpoint_eval.evaluate_checkpoint(changed, data, out)
  _, _, probs = read_predictions(out / 'predictions.csv')
  return changed, data, probs


def test_evaluation_views_follow_eval_image_size_and_colour_constancy(run, external_set, tmp_path):
  """The run's evaluation settings reach every evaluation path: scoring a set and Grad-CAM's view."""
  folder, ids, _ = external_set
  config = run.config.copy_and_resolve_references()
  config.data.eval_image_size = 32  # the run trained at 24 px
  config.data.colour_constancy = 'shades_of_grey'
  changed, data, probs = scored_with(run, config, folder, tmp_path)
  views = []
  for image_id in ids[:3]:
    pil = augment.to_pil((folder / 'images' / f'{image_id}.jpg').read_bytes(), 32)
    gains = augment.shades_of_grey_gains(np.asarray(pil), 6.0)
    views.append(augment.apply_gains(augment.eval_resize(pil, 32, config.data.resize), gains))
  np.testing.assert_allclose(probs[:3], model_probs(run, views), atol=2e-6)
  np.testing.assert_array_equal(inference.eval_view(changed, data.source, 0), views[0])


def test_larger_images_are_shrunk_to_the_training_images_short_side(run, external_set, tmp_path):
  """config.data.match_training_resolution: as the model card's resize rule says, an image whose
  shorter side is longer than training_short_side is first resized to it; smaller ones are not."""
  folder, ids, _ = external_set  # shorter sides 30, 17, 64, 35, ...
  config = run.config.copy_and_resolve_references()
  config.data.eval_image_size = 32
  plain = dataclasses.replace(run, config=config.copy_and_resolve_references())
  config.data.match_training_resolution = True
  config.data.training_short_side = 20
  changed, data, probs = scored_with(run, config, folder, tmp_path)
  views = []
  for image_id in ids[:4]:
    pil = Image.open(folder / 'images' / f'{image_id}.jpg')
    pil.draft('RGB', (20, 20))
    pil = pil.convert('RGB')
    scale = 20 / min(pil.size)
    if scale < 1:
      pil = pil.resize((round(pil.width * scale), round(pil.height * scale)), Image.BILINEAR)
    views.append(augment.eval_resize(pil, 32, config.data.resize))
  np.testing.assert_allclose(probs[:4], model_probs(run, views), atol=2e-6)
  np.testing.assert_array_equal(inference.eval_view(changed, data.source, 1),
                                inference.eval_view(plain, data.source, 1))  # 17x23: as it was
  assert not np.array_equal(inference.eval_view(changed, data.source, 2),
                            inference.eval_view(plain, data.source, 2))  # 64x64: shrunk


# ------------------------------------------------------------ refusals


def copy_config(trained, workdir):
  workdir.mkdir(parents=True, exist_ok=True)
  shutil.copy(trained / 'config.json', workdir / 'config.json')
  return workdir


def save_checkpoint_with_head(workdir, num_classes):
  # One narrow stage is enough: the head's class count is checked before anything else.
  model = registry.build_classifier('small_cnn', num_classes=num_classes, dropout_rate=0.1,
                                    rngs=nnx.Rngs(0), widths=(4,))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  checkpoints = ckpt.RunCheckpoints(workdir)
  checkpoints.save_best(3, params, rest, {'epoch': 1})
  checkpoints.wait_and_close()


@pytest.mark.parametrize('case, message', [
    ('missing', 'does not exist; pass the --workdir of a training run'),
    ('not_a_run', 'has no config.json'),
    ('untrained', 'has no checkpoints yet; train it first'),
    ('unknown_step', 'No checkpoint of step 12345 in this workdir; it keeps steps'),
    ('bad_name', 'use best, latest or a step number'),
    ('five_classes', 'has a 5-class head, but its config.json says it was trained on synthetic with 7 classes'),
])
def test_unusable_workdirs_are_refused_with_the_fix(trained, tmp_path, case, message):
  workdir, checkpoint = tmp_path / 'w', 'best'
  if case == 'not_a_run':
    workdir.mkdir()
  elif case == 'untrained':
    copy_config(trained, workdir)
  elif case == 'unknown_step':
    workdir, checkpoint = trained, '12345'
  elif case == 'bad_name':
    workdir, checkpoint = trained, 'worst'
  elif case == 'five_classes':
    save_checkpoint_with_head(copy_config(trained, workdir), 5)
  with pytest.raises(inference.RunInputError, match=message):
    inference.load_run(workdir, checkpoint)


def test_evaluate_script_errors_are_one_line_without_traceback(tmp_path, python):
  result = script(python, 'evaluate.py', f'--workdir={tmp_path / "nope"}')
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith('error: --workdir')
  assert 'Traceback' not in result.stderr


# ------------------------------------------------------------- scripts end to end


def test_evaluate_script_on_an_external_set(trained, external_set, tmp_path, python):
  """An ISIC 2018 ground truth as the official scorer reads it: a score_weight column that
  leaves one row out, and ISIC_0035068, which the scorer always leaves out."""
  folder, ids, labels = external_set
  images = tmp_path / 'set' / 'images'
  images.mkdir(parents=True)
  for image_id in ids:
    (images / f'{image_id}.jpg').symlink_to(folder / 'images' / f'{image_id}.jpg')
  write_jpegs(images, ['ISIC_0035068'], seed=9)
  weights = [0.0 if image_id == ids[3] else 1.0 for image_id in ids] + [1.0]
  truth = tmp_path / 'set' / 'isic.csv'
  write_truth(truth, [*ids, 'ISIC_0035068'], [*labels, CLASS_NAMES.index('nv')], weights)
  out = tmp_path / 'out'
  result = script(python, 'evaluate.py', f'--workdir={trained}', '--checkpoint=latest',
                  '--tta=flip_rot',
                  f'--images_dir={images}', f'--labels_csv={truth}', f'--out={out}')
  assert result.returncode == 0, result.stderr
  assert re.search(r'external-set-[0-9a-f]{8}, latest checkpoint', result.stdout)
  assert '95% CI' in result.stdout
  left_out = f'left out (weight 0): {ids[3]}, ISIC_0035068'
  assert f'on {len(ids) - 1} of {len(ids) + 1} images; {left_out}' in result.stdout
  assert left_out in (out / 'classification_report.txt').read_text()
  metrics = json.loads((out / 'metrics.json').read_text())
  assert metrics['tta'] == 'flip_rot' and metrics['checkpoint'] == 'latest'
  assert metrics['labels_format'] == 'isic2018' and metrics['num_examples'] == len(ids) - 1
  assert metrics['isic_challenge']['excluded_images'] == [ids[3], 'ISIC_0035068']
  assert len(read_predictions(out / 'predictions.csv')[0]) == len(ids) + 1  # every row predicted
  assert not list(out.glob('*.png')), "the run's config.eval.figures is off"
  official = official_score(truth, out / 'predictions_isic.csv')
  assert abs(metrics['isic_challenge']['balanced_accuracy'] - official.overall) <= 1e-9


def test_a_run_from_before_datasets_were_described_still_loads(trained, tmp_path):
  """W/config.json of older runs has no data.dataset and no dataset_description."""
  workdir = tmp_path / 'old'
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns('eval'))
  saved = json.loads((workdir / 'config.json').read_text())
  del saved['data']['dataset'], saved['dataset_description']
  (workdir / 'config.json').write_text(json.dumps(saved))
  old = inference.load_run(workdir, 'best')
  assert old.description.name == 'synthetic' and old.description.class_names == CLASS_NAMES
  assert old.config.data.dataset == 'ham10000'
  data = checkpoint_eval.run_split(old, 'test')
  assert len(data.indices) > 0


def test_real_isic2018_test_dev_matches_the_official_scorer(run, tmp_path):
  """The real images and official ground truth (453 of the 1,512; ISIC_0035068 is not among
  them, the test above covers it). The tiny synthetic model makes the figure meaningless as a
  result, but the files, their format and the parity with the scorer are the real ones."""
  if not ISIC2018_DIR:
    pytest.skip('SKINJAX_ISIC2018_DIR not set: point it at a folder with images/ and '
                'ISIC2018_Task3_Test_GroundTruth.csv (.ci/run uses ../shared/data/isic2018_test_dev)')
  folder = pathlib.Path(ISIC2018_DIR)
  truth = folder / 'ISIC2018_Task3_Test_GroundTruth.csv'
  data = checkpoint_eval.external_set(folder / 'images', truth, run)
  metrics = checkpoint_eval.evaluate_checkpoint(run, data, tmp_path)
  official = official_score(truth, tmp_path / 'predictions_isic.csv')
  assert metrics['num_examples'] == metrics['isic_challenge']['num_scored'] == 453
  assert metrics['isic_challenge']['excluded_images'] == []
  assert abs(metrics['isic_challenge']['balanced_accuracy'] - official.overall) <= 1e-9


def test_predict_script_json_and_gradcam(trained, external_set, tmp_path, python):
  folder, ids, _ = external_set
  result = script(python, 'predict.py', f'--workdir={trained}', '--json',
                  f'--gradcam={tmp_path / "cams"}',
                  folder / 'images' / f'{ids[3]}.jpg', folder / 'images')
  assert result.returncode == 0, result.stderr
  records = [json.loads(line) for line in result.stdout.splitlines()]
  assert len(records) == 1 + len(ids)
  assert records[0]['image'].endswith(f'{ids[3]}.jpg')
  for record in records:
    probs = record['probabilities']
    assert list(probs) == list(CLASS_NAMES) and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    assert record['top_class'] == max(probs, key=probs.get)
    with Image.open(record['gradcam']) as overlay:
      assert overlay.mode == 'RGB' and min(overlay.size) >= 256
  # The same file given twice gets two overlays, not one overwritten.
  assert len({r['gradcam'] for r in records}) == len(records)


def test_predict_script_names_a_missing_image(trained, tmp_path, python):
  result = script(python, 'predict.py', f'--workdir={trained}', tmp_path / 'lesion.jpg')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  missing = tmp_path / 'lesion.jpg'
  assert result.stderr.strip().splitlines()[-1] == (f'error: No such image or folder: {missing}; '
                                                    'check the path.')


# ------------------------------------------------------------- study and comparison


def write_config(path, expression):
  path.write_text(f'from tests.helpers import tiny_config\n\n\ndef get_config():\n'
                  f'  return {expression}\n')
  return path


def markdown_tables(path):
  """Each markdown table of the file as {first cell: {column title: cell}}, in order."""
  tables, lines = [], path.read_text().splitlines() + ['']
  block = []
  for line in lines:
    if line.startswith('| '):
      block.append([cell.strip() for cell in line.strip('|').split('|')])
    elif block and not line.startswith('|---'):
      tables.append({cells[0]: dict(zip(block[0], cells)) for cells in block[1:]})
      block = []
  return tables


def markdown_rows(path):
  return markdown_tables(path)[0]


def test_study_skips_finished_runs_resumes_unfinished_ones_then_compares(trained, study_dir,
                                                                         external_set, python):
  configs = study_dir / 'configs'
  configs.mkdir(exist_ok=True)
  tiny_a = write_config(configs / 'tiny_a.py', 'tiny_config()')
  tiny_b = write_config(configs / 'tiny_b.py', TINY_B)
  # tiny_b: stopped after tiny_a's two epochs, before its report; its config asks for three, a
  # deliberate change the trainer accepts only when told.
  shutil.copytree(trained, study_dir / 'tiny_b', ignore=shutil.ignore_patterns('report', 'eval'))
  folder, _, _ = external_set
  result = script(python, 'run_study.py', f'--out={study_dir}', f'--configs={tiny_a},{tiny_b}',
                  '--override', 'train.log_every_steps=3', '--override',
                  'train.allow_config_change=true', f'--images_dir={folder / "images"}',
                  f'--labels_csv={folder / "isic.csv"}', '--tta=flip', cwd=study_dir)
  assert result.returncode == 0, result.stdout + result.stderr
  assert '[tiny_a] finished before; skipping.' in result.stdout
  # Both finished runs are scored with the flips on their test split and on the external set,
  # where evaluate.py puts them by default.
  for name in ('tiny_a', 'tiny_b'):
    assert f'[{name}] scoring the best checkpoint on' in result.stdout
    for split, size in (('test', 48), (f'external-{folder.name}-*', 14)):
      [scored] = [json.loads(path.read_text()) for path in
                  (study_dir / name / 'eval').glob(f'{split}-best-tta_flip/metrics.json')]
      assert (scored['checkpoint'], scored['tta'], scored['num_examples']) == ('best', 'flip', size)
  assert 'TTA views (flip)' in (study_dir / 'comparison.md').read_text()
  assert '[tiny_b] training in' in result.stdout
  assert re.search(r'Resuming from step \d+ \(epoch 2\)', result.stdout)
  config_b = json.loads((study_dir / 'tiny_b' / 'config.json').read_text())
  assert config_b['train']['log_every_steps'] == 3 and config_b['train']['num_epochs'] == 3
  assert json.loads((study_dir / 'tiny_b' / 'report' / 'metrics.json').read_text())['epochs_run'] == 3
  assert (study_dir / 'comparison.md').exists() and (study_dir / 'comparison.png').exists()
  assert markdown_rows(study_dir / 'comparison.md').keys() == {'tiny_a', 'tiny_b'}


def test_study_says_which_runs_could_not_be_evaluated(study_dir, tmp_path, python):
  if not (study_dir / 'tiny_b' / 'report' / 'metrics.json').exists():
    pytest.skip('needs the runs that test_study_skips_finished_runs_resumes_unfinished_ones... makes')
  (tmp_path / 'images').mkdir()
  (tmp_path / 'broken.csv').write_text('image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0000001,1,0,0,0,0,0,0\n')
  configs = study_dir / 'configs'
  result = script(python, 'run_study.py', f'--out={study_dir}',
                  f'--configs={configs / "tiny_a.py"},{configs / "tiny_b.py"}',
                  f'--images_dir={tmp_path / "images"}', f'--labels_csv={tmp_path / "broken.csv"}',
                  cwd=study_dir)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: 2 trained runs could not be evaluated: tiny_a, tiny_b. Fix the cause and run the '
      'same command again; finished runs and evaluations are kept.')
  assert 'failed to train' not in result.stderr


def test_compare_table_reads_each_run(trained, study_dir, run, external_set, tmp_path, python):
  if not (study_dir / 'tiny_b' / 'report' / 'metrics.json').exists():
    pytest.skip('needs the run that test_study_skips_finished_runs_resumes_unfinished_ones... makes')
  # tiny_a has been evaluated (by-lesion intervals) and scored on an external set; tiny_b only
  # has its training report (and the study's results with TTA, which a plain table leaves out).
  checkpoint_eval.evaluate_checkpoint(run, checkpoint_eval.run_split(run, 'test'),
                                      trained / 'eval' / 'test-best')
  folder, _, _ = external_set
  result = script(python, 'evaluate.py', f'--workdir={trained}',
                  f'--images_dir={folder / "images"}',
                  f'--labels_csv={folder / "isic.csv"}')
  assert result.returncode == 0, result.stderr
  result = script(python, 'compare.py', study_dir / 'tiny_a', study_dir / 'tiny_b',
                  f'--out={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert (tmp_path / 'comparison.png').stat().st_size > 0
  test_rows, external_rows = markdown_tables(tmp_path / 'comparison.md')
  rows = test_rows
  assert list(rows) == ['tiny_a', 'tiny_b']
  assert f'## External test set: {folder.name}' in (tmp_path / 'comparison.md').read_text()
  [scored] = [json.loads(path.read_text())
              for path in (trained / 'eval').glob(f'external-{folder.name}-*-best/metrics.json')]
  external, tested = external_rows['tiny_a'], json.loads(
      (trained / 'eval' / 'test-best' / 'metrics.json').read_text())
  assert external['images'] == '14'
  for key, title in (('balanced_accuracy', 'balanced acc. [95% CI]'),
                     ('macro_auc', 'macro AUC [95% CI]')):
    low, high = scored['ci'][key]
    assert external[title] == f'{scored[key]:.3f} [{low:.3f}, {high:.3f}]'
  gap = scored['balanced_accuracy'] - tested['balanced_accuracy']
  assert external['gap in balanced acc. (external - test)'] == f'{gap:+.3f}'
  assert external_rows['tiny_b']['images'] == 'not evaluated'
  for name, scores_path, epochs, size in (
      ('tiny_a', 'eval/test-best/metrics.json', '2', '24'),
      ('tiny_b', 'report/metrics.json', '3', '24')):
    row, reported = rows[name], json.loads((study_dir / name / 'report' / 'metrics.json').read_text())
    scores = json.loads((study_dir / name / scores_path).read_text())
    assert (row['arch'], row['init'], row['epochs'], row['image size']) == ('small_cnn', 'scratch',
                                                                            epochs, size)
    assert row['params'] == f"{reported['num_params'] / 1e6:.2f}M"
    timing = json.loads((study_dir / name / 'report' / 'timing.json').read_text())
    assert row['train time'] == f"{timing['train_time_s']:.0f} s"
    assert row['accuracy'] == f"{scores['accuracy']:.3f}"
    low, high = scores['ci']['macro_auc']
    assert row['macro AUC [95% CI]'] == f"{scores['macro_auc']:.3f} [{low:.3f}, {high:.3f}]"
    low, high = scores['ci']['balanced_accuracy']
    assert row['balanced acc. [95% CI]'] == f"{scores['balanced_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    low, high = scores['ci']['melanoma_recall']
    assert row['melanoma recall [95% CI]'] == f"{scores['melanoma_recall']:.3f} [{low:.3f}, {high:.3f}]"
  text = (tmp_path / 'comparison.md').read_text()
  assert 'intervals from eval/test-best/metrics.json, resampled by lesion' in text
  assert 'intervals from report/metrics.json, resampled by lesion' in text


def test_compare_with_tta_reads_only_results_of_that_mode(trained, run, external_set, tmp_path):
  workdir = tmp_path / 'w'  # the run without the evaluations other tests made
  shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns('eval'))
  with pytest.raises(compare.CompareError, match='evaluate.py --workdir=.* --tta=flip first'):
    compare.write_comparison([workdir], tmp_path, tta='flip')
  test_data = checkpoint_eval.run_split(run, 'test')
  flipped = checkpoint_eval.evaluate_checkpoint(
      run, test_data, workdir / 'eval' / 'test-best-tta_flip', tta_mode='flip')
  folder, _, _ = external_set
  external = checkpoint_eval.external_set(folder / 'images', folder / 'ham.csv', run)
  out = workdir / 'eval' / checkpoint_eval.default_out_dir(run, external, 'flip').name
  external_flipped = checkpoint_eval.evaluate_checkpoint(run, external, out, tta_mode='flip')
  [row] = compare.write_comparison([workdir], tmp_path, tta='flip')
  assert row['ci_source'] == 'eval/test-best-tta_flip/metrics.json'
  assert row['balanced_accuracy'] == flipped['balanced_accuracy']
  assert (row['external'][external.name]['balanced_accuracy']
          == external_flipped['balanced_accuracy'])
  assert 'TTA views (flip)' in (tmp_path / 'comparison.md').read_text()
  # Without TTA, the flipped results are not read as plain ones.
  [plain] = compare.write_comparison([workdir], tmp_path)
  assert plain['external'] == {} and plain['ci_source'] == 'report/metrics.json'


def test_compare_falls_back_to_predictions_csv(study_dir, trained, tmp_path):
  """A report written before intervals existed: they are bootstrapped from predictions.csv."""
  old = tmp_path / 'old_run'
  shutil.copytree(trained / 'report', old / 'report')
  shutil.copy(trained / 'config.json', old / 'config.json')
  reported = json.loads((old / 'report' / 'metrics.json').read_text())
  ci = reported.pop('ci')
  (old / 'report' / 'metrics.json').write_text(json.dumps(reported))
  [row] = compare.write_comparison([old], tmp_path)
  assert row['ci_source'] == 'report/predictions.csv'
  # The trainer's predictions.csv has no lesion ids, so this is its own per-image bootstrap.
  assert {key: row['ci'][key] for key in eval_metrics.CI_METRICS} == {
      key: ci[key] for key in eval_metrics.CI_METRICS}
  # predictions.csv holds the probabilities to 6 decimals: the AUC interval may move by a hair.
  np.testing.assert_allclose(row['ci']['macro_auc'], ci['macro_auc'], atol=1e-3)


def test_compare_refuses_an_unfinished_run(tmp_path):
  (tmp_path / 'w').mkdir()
  with pytest.raises(compare.CompareError, match='has not finished'):
    compare.write_comparison([tmp_path / 'w'], tmp_path)


def test_verdict_names_the_runs_it_is_not_clearly_ahead_of():
  def row(name, value, interval):
    return {'name': name, 'arch': 'resnet50', 'init': 'imagenet', 'balanced_accuracy': value,
            'ci': {'balanced_accuracy': interval}}

  runs = [row('a', 0.50, [0.45, 0.56]), row('b', 0.60, [0.55, 0.65]), row('c', 0.3, [0.25, 0.35])]
  assert compare._verdict(runs) == ('Highest balanced accuracy: b (resnet50, imagenet); its '
                                    'interval overlaps those of a.')

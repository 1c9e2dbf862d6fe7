"""scripts/export.py and the ONNX model it writes, run back through onnxruntime.

The reference is the JAX model itself: the run's own predictions (inference.predict_source, the
path evaluate.py and predict.py take) on real ISIC 2018 test images, and for each architecture
family the exported function run by JAX.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from skinjax.data import augment
from skinjax.data import pipeline
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import inference
from skinjax.export import graph
from skinjax.export import model_card
from skinjax.export import onnx_file
from skinjax.export import onnx_run
from skinjax.models import cpu_conv
from tests.helpers import FAST_COMPILE
from tests.helpers import REPO
from tests.test_evaluation_scripts import script

pytest.importorskip('jax2onnx',
                    reason="the export extra is not installed: pip install -e '.[export]'")

ISIC2018_DIR = os.environ.get('SKINJAX_ISIC2018_DIR')
FAMILIES = ('small_cnn', 'resnet50', 'xception', 'efficientnetb0', 'efficientnet_lite0')


def isic2018() -> pathlib.Path:
  if not ISIC2018_DIR:
    pytest.skip('SKINJAX_ISIC2018_DIR not set: point it at a folder with images/ and '
                'ISIC2018_Task3_Test_GroundTruth.csv (.ci/run uses ../shared/data/isic2018_test_dev)')
  return pathlib.Path(ISIC2018_DIR)


@pytest.fixture(scope='module')
def run(tiny_run):
  return inference.load_run(tiny_run[0], 'best')


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  return onnx_file.export(run, tmp_path_factory.mktemp('export') / 'onnx').out_dir


# ------------------------------------------------------------------ the graph's pieces


def test_colour_constancy_in_the_graph_is_the_pipeline_s():
  """jnp Shades of Grey (float32, in the graph) against augment's (float64, in the pipeline)."""
  rng = np.random.default_rng(0)
  cast = np.array([1.0, 0.8, 0.6])  # a warm cast, as dermoscopes give
  images = np.clip(rng.uniform(0, 255, (6, 40, 40, 3)) * cast, 0, 255).astype(np.uint8)
  images[5, ..., 2] = 0  # a channel black everywhere: no cast to remove, the image is kept
  expected = np.stack([augment.apply_gains(image, augment.shades_of_grey_gains(image, 6.0))
                       for image in images])
  got = np.asarray(jax.jit(graph.shades_of_grey, static_argnums=1)(images, 6.0))
  assert got.dtype == np.uint8 and got.shape == images.shape
  difference = np.abs(got.astype(int) - expected)
  # The graph's gains lie on a grid of 1/4096: a product moves by at most 255/8192 of a level.
  assert difference.max() <= 1 and (difference == 0).mean() > 0.98
  np.testing.assert_array_equal(got[5], images[5])


def test_portable_ops_switch_off_the_cpu_fast_paths():
  x, depthwise = jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 1, 4))

  def traced() -> str:  # new functions each time: JAX caches a traced function's jaxpr
    conv = lambda a, k: cpu_conv.conv_general_dilated(  # noqa: E731
        a, k, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=4)
    pool = lambda a: cpu_conv.max_pool(a, (2, 2), (2, 2))  # noqa: E731
    return str(jax.make_jaxpr(conv)(x, depthwise)) + str(jax.make_jaxpr(pool)(x))

  fast = traced()
  with cpu_conv.portable_ops():
    portable = traced()
  assert 'conv_general_dilated' not in fast and 'reduce_window_max' not in fast
  assert 'conv_general_dilated' in portable and 'reduce_window_max' in portable
  assert 'custom_vjp' not in portable and 'ffi' not in portable


def test_every_architecture_family_matches_jax_in_onnxruntime(tmp_path):
  """One process (compiled at -O0) exports a randomly weighted model of each family and predicts
  real dermoscopy images with both; the last family also has colour constancy in its graph."""
  images = isic2018() / 'images'
  result = subprocess.run(
      [sys.executable, str(REPO / 'tests' / 'onnx_families.py'), images, tmp_path, *FAMILIES],
      cwd=REPO, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'XLA_FLAGS': FAST_COMPILE, 'PYTHONPATH': str(REPO)})
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [json.loads(line) for line in result.stdout.splitlines()]
  assert [row['arch'] for row in rows] == list(FAMILIES)
  for row in rows:
    assert row['max_abs_diff'] <= 1e-5, row
    # Neither uniform nor one-hot: both would hide a difference.
    assert 0.2 < row['max_probability'] < 0.999, row
    assert 'Conv' in row['op_types'], row
    assert set(row['op_types']) <= STANDARD_ONNX_OPS, set(row['op_types']) - STANDARD_ONNX_OPS
  assert {row['arch'] for row in rows if 'MaxPool' in row['op_types']} == {
      'small_cnn', 'resnet50', 'xception'}


# Every op a family's graph may hold: the ONNX standard (default domain) ones jax2onnx emits.
STANDARD_ONNX_OPS = {
    'Add', 'AveragePool', 'Cast', 'Clip', 'Concat', 'Constant', 'Conv', 'Div', 'Equal', 'Exp',
    'Expand', 'Flatten', 'Gather', 'Gemm', 'GlobalAveragePool', 'Greater', 'Identity', 'MatMul',
    'Max', 'MaxPool', 'Min', 'Mul', 'Neg', 'Pad', 'Pow', 'ReduceL2', 'ReduceMax', 'ReduceMean',
    'ReduceMin', 'ReduceSum', 'Relu', 'Reshape', 'Round', 'Shape', 'Sigmoid', 'Slice', 'Softmax',
    'Sqrt', 'Squeeze', 'Sub', 'Tanh', 'Transpose', 'Unsqueeze', 'Where', 'And', 'Not', 'Less',
    'LessOrEqual', 'GreaterOrEqual', 'Or', 'ReduceProd', 'HardSigmoid', 'HardSwish', 'Erf',
    'Abs', 'Sign', 'Floor', 'Ceil', 'Log', 'Reciprocal', 'Range', 'ConstantOfShape', 'Tile',
    'Split', 'BatchNormalization', 'ArgMax', 'Einsum', 'Mod', 'Xor', 'IsNaN', 'IsInf', 'Size',
    'Dropout', 'ReduceSumSquare',
}


# ------------------------------------------------------------------ a trained run


def test_a_trained_run_scores_the_same_through_onnxruntime(run, exported):
  """The 453 real ISIC 2018 test images: probabilities within 1e-5, the same balanced accuracy."""
  folder = isic2018()
  data = checkpoint_eval.external_set(folder / 'images',
                                      folder / 'ISIC2018_Task3_Test_GroundTruth.csv', run)
  onnx_model = onnx_run.open_export(exported)
  jax_probs = run.predict(data.source, data.indices)
  onnx_probs = onnx_model.predict(data.source, data.indices)
  assert len(onnx_probs) == 453
  assert np.abs(onnx_probs - jax_probs).max() <= 1e-5
  assert (skm.balanced_accuracy_score(data.labels, onnx_probs.argmax(-1))
          == skm.balanced_accuracy_score(data.labels, jax_probs.argmax(-1)))
  # TTA averages the same views in both.
  subset = data.indices[:16]
  np.testing.assert_allclose(onnx_model.predict(data.source, subset, tta_mode='flip_rot'),
                             run.predict(data.source, subset, tta_mode='flip_rot'), atol=1e-5)


def test_evaluating_the_run_s_own_test_split_through_onnxruntime(run, exported, tmp_path):
  """evaluate.py --onnx --split=test: the split comes from the training config in the card."""
  onnx_model = onnx_run.open_export(exported)
  data = checkpoint_eval.run_split(onnx_model, 'test')
  np.testing.assert_array_equal(data.indices, checkpoint_eval.run_split(run, 'test').indices)
  metrics = checkpoint_eval.evaluate_checkpoint(onnx_model, data, tmp_path / 'onnx')
  jax_metrics = checkpoint_eval.evaluate_checkpoint(run, data, tmp_path / 'jax')
  assert metrics['balanced_accuracy'] == jax_metrics['balanced_accuracy']
  assert metrics['checkpoint'] == 'onnx' and metrics['step'] == run.step


def test_the_card_s_resize_rule_and_the_onnx_views_shrink_as_training_did():
  """A run evaluated at its training images' resolution: the card says how, and evaluate.py
  --onnx takes the same views as the run itself."""
  view = pipeline.EvalView(176, 'center_crop', 6.0, source_side=150)
  rule = model_card.resize_rule(view)
  assert rule.startswith("JPEGs are decoded with PIL's Image.draft('RGB', (150, 150)) first.")
  assert 'shorter side is longer than 150 px' in rule and 'to 176x176' in rule
  assert "draft('RGB', (176, 176))" in model_card.resize_rule(pipeline.EvalView(176))
  card = {'input': {'image_size': 176, 'resize_mode': 'center_crop', 'source_short_side': 150}}
  exported = onnx_run.OnnxRun(pathlib.Path('.'), card, None, None, None)
  assert exported.eval_view == pipeline.EvalView(176, 'center_crop', source_side=150)


def test_the_model_card_says_what_the_model_is(run, exported):
  card = json.loads((exported / model_card.CARD_FILE).read_text())
  assert card['classes'] == list(CLASS_NAMES) and card['melanoma_class'] == 'mel'
  assert card['input']['shape'] == ['batch', 24, 24, 3] and card['input']['dtype'] == 'uint8'
  assert 'central square' in card['input']['resize_rule']
  assert card['architecture'] == 'small_cnn' and card['weight_source'].startswith('none')
  assert card['run']['step'] == run.step and card['run']['num_params'] == run.num_params
  assert card['dataset']['fingerprint'] == json.loads(
      (run.workdir / 'config.json').read_text())['dataset']
  assert card['training_config']['model']['arch'] == 'small_cnn'
  report = json.loads((run.workdir / 'report' / 'metrics.json').read_text())
  test = card['metrics']['test (training report)']
  assert test['balanced_accuracy'] == report['balanced_accuracy']
  assert test['ci_95']['balanced_accuracy'] == report['ci']['balanced_accuracy']
  assert 'not a medical device' in card['intended_use']
  markdown = (exported / model_card.CARD_MARKDOWN).read_text()
  assert 'not a medical device' in markdown and f"{report['balanced_accuracy']:.3f}" in markdown


def test_the_card_keeps_the_scores_of_the_exported_step_only(tmp_path):
  """The trainer's report and evaluate.py's folders, external sets included, at that step."""
  def write(folder, **metrics):
    folder.mkdir(parents=True)
    (folder / 'metrics.json').write_text(json.dumps({'num_examples': 10, 'balanced_accuracy': 0.5,
                                                     'ci': {'balanced_accuracy': [0.4, 0.6]},
                                                     **metrics}))
  write(tmp_path / 'report', best_step=18)
  write(tmp_path / 'eval' / 'external-derm7pt_dev-da6aa963-best-tta_flip_rot', step=18,
        tta='flip_rot')
  write(tmp_path / 'eval' / 'test-9', step=9)  # another checkpoint's
  scores = model_card.scored_sets(tmp_path, 18)
  assert sorted(scores) == ['external-derm7pt_dev-da6aa963-best-tta_flip_rot',
                            'test (training report)']
  assert scores['external-derm7pt_dev-da6aa963-best-tta_flip_rot']['tta'] == 'flip_rot'
  assert scores['test (training report)']['ci_95'] == {'balanced_accuracy': [0.4, 0.6]}


def test_the_scripts_predict_and_evaluate_with_onnx(run, exported, tmp_path, python):
  """predict.py --onnx against predict.py --workdir, and evaluate.py --onnx's report."""
  folder = isic2018()
  truth = folder / 'ISIC2018_Task3_Test_GroundTruth.csv'
  rows = truth.read_text().splitlines()
  (tmp_path / 'truth.csv').write_text('\n'.join(rows[:41]) + '\n')  # the first 40 images
  images = [folder / 'images' / f'{row.split(",")[0]}.jpg' for row in rows[1:4]]
  by_onnx = script(python, 'predict.py', f'--onnx={exported / onnx_file.ONNX_FILE}', '--json',
                   *images)
  by_jax = script(python, 'predict.py', f'--workdir={run.workdir}', '--json', *images)
  assert by_onnx.returncode == 0 and by_jax.returncode == 0, by_onnx.stderr + by_jax.stderr
  for onnx_line, jax_line in zip(by_onnx.stdout.splitlines(), by_jax.stdout.splitlines(),
                                 strict=True):
    onnx_record, jax_record = json.loads(onnx_line), json.loads(jax_line)
    assert onnx_record['top_class'] == jax_record['top_class']
    for name in CLASS_NAMES:
      assert onnx_record['probabilities'][name] == pytest.approx(
          jax_record['probabilities'][name], abs=1e-5)
  result = script(python, 'evaluate.py', f'--onnx={exported}', f'--images_dir={folder / "images"}',
                  f'--labels_csv={tmp_path / "truth.csv"}')
  assert result.returncode == 0, result.stderr[-2000:]
  written = list((exported / 'eval').glob('external-*-onnx/metrics.json'))
  assert len(written) == 1
  metrics = json.loads(written[0].read_text())
  data = checkpoint_eval.external_set(folder / 'images', tmp_path / 'truth.csv', run)
  jax_pred = run.predict(data.source, data.indices).argmax(-1)
  assert metrics['num_examples'] == 40
  assert metrics['balanced_accuracy'] == pytest.approx(
      skm.balanced_accuracy_score(data.labels, jax_pred), abs=1e-12)


# ------------------------------------------------------------------ bad input


def test_an_existing_out_is_refused_and_kept(run, tmp_path, python):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  result = script(python, 'export.py', f'--workdir={run.workdir}', f'--out={out}')
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: --out') and '--overwrite' in lines[-1], result.stderr
  assert [p.name for p in out.iterdir()] == ['keep.txt']


def test_a_workdir_without_a_checkpoint_is_refused(tmp_path, python):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'config.json').write_text('{}')
  result = script(python, 'export.py', f'--workdir={workdir}', f'--out={tmp_path / "out"}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith('error: ')
  assert 'train it' in result.stderr
  assert not (tmp_path / 'out').exists()


def test_without_jax2onnx_the_error_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'jax2onnx', None)  # what an environment without it gives
  with pytest.raises(onnx_file.ExportError, match=r"pip install -e '\.\[export\]'"):
    onnx_file.import_jax2onnx()


def test_a_failed_export_leaves_nothing(run, tmp_path, monkeypatch):
  import jax2onnx

  def failing(*args, **kwargs):
    raise RuntimeError('interrupted')

  monkeypatch.setattr(jax2onnx, 'to_onnx', failing)
  with pytest.raises(RuntimeError):
    onnx_file.export(run, tmp_path / 'out')
  assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_a_previous_export(run, exported, tmp_path):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'old.txt').write_text('old')
  onnx_file.export(run, out, overwrite=True)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out']
  assert sorted(p.name for p in out.iterdir()) == sorted(
      [model_card.CARD_FILE, model_card.CARD_MARKDOWN, onnx_file.ONNX_FILE])


def test_images_of_the_wrong_size_are_refused(exported):
  model = onnx_run.open_export(exported)
  with pytest.raises(onnx_run.OnnxInputError, match=r'24x24 pixels.*resize_rule'):
    model.probabilities(np.zeros((2, 32, 32, 3), np.uint8))
  with pytest.raises(onnx_run.OnnxInputError, match='uint8'):
    model.probabilities(np.zeros((2, 24, 24, 3), np.float32))


def test_a_card_of_another_export_is_refused(exported, tmp_path):
  copy = tmp_path / 'copy'
  copy.mkdir()
  (copy / onnx_file.ONNX_FILE).write_bytes((exported / onnx_file.ONNX_FILE).read_bytes())
  card = json.loads((exported / model_card.CARD_FILE).read_text())
  card['input']['image_size'] = 224
  (copy / model_card.CARD_FILE).write_text(json.dumps(card))
  with pytest.raises(onnx_run.OnnxInputError, match='card belongs to another export'):
    onnx_run.open_export(copy)
  with pytest.raises(onnx_run.OnnxInputError, match='there is no'):
    onnx_run.open_export(tmp_path / 'nowhere')

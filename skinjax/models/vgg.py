"""VGG16, layer for layer as `keras.applications.vgg16`.

Joining a module path with '_' gives the Keras layer name: ('block1', 'conv1') -> 'block1_conv1',
('fc1',) -> 'fc1'. The weight port relies on it.
"""

import jax.numpy as jnp
from flax import nnx

from skinjax.models import cpu_conv
from skinjax.models.layers import conv, dense

# (filters, number of 3x3 convs) per block; each block ends in a 2x2/2 max-pool.
VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGGBlock(nnx.Module):
  def __init__(self, in_features: int, filters: int, num_convs: int, *, dtype, rngs: nnx.Rngs):
    self.num_convs = num_convs
    for i in range(num_convs):
      setattr(self, f'conv{i + 1}',
              conv(in_features if i == 0 else filters, filters, 3, dtype=dtype, rngs=rngs))

  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    for i in range(self.num_convs):
      x = nnx.relu(getattr(self, f'conv{i + 1}')(x))
    return cpu_conv.max_pool(x, (2, 2), strides=(2, 2))


class VGG16(nnx.Module):
  """`block1` ... `block5` [, `fc1`, `fc2`, `predictions`].

  Without the top it returns block5's pooled NHWC feature map; with it, float32 logits (Keras
  applies a softmax on top). The top flattens NHWC like Keras, so it fixes the input size
  (`image_size`, 224 for the ImageNet weights).
  """

  def __init__(self, *, include_top: bool = False, num_classes: int = 1000,
               image_size: int = 224, dtype=jnp.float32, rngs: nnx.Rngs):
    self.include_top = include_top
    self.block_names = tuple(f'block{i + 1}' for i in range(len(VGG16_BLOCKS)))
    in_features = 3
    for name, (filters, num_convs) in zip(self.block_names, VGG16_BLOCKS):
      setattr(self, name, VGGBlock(in_features, filters, num_convs, dtype=dtype, rngs=rngs))
      in_features = filters
    self.num_features = in_features
    if include_top:
      side = image_size // 2 ** len(VGG16_BLOCKS)
      self.fc1 = dense(side * side * in_features, 4096, rngs=rngs)
      self.fc2 = dense(4096, 4096, rngs=rngs)
      self.predictions = dense(4096, num_classes, rngs=rngs)

  def layer_groups(self) -> list[str]:
    return [*self.block_names] + (['fc1', 'fc2', 'predictions'] if self.include_top else [])

  def keras_layer_order(self) -> list[tuple[str, ...]]:
    """Module paths of Keras' weighted layers, in `keras.Model.layers` order (see registry)."""
    convs = [(b, f'conv{i + 1}') for b in self.block_names for i in range(getattr(self, b).num_convs)]
    return convs + ([('fc1',), ('fc2',), ('predictions',)] if self.include_top else [])

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    del rngs  # VGG16 has no dropout or drop-connect.
    x = images
    for name in self.block_names:
      x = getattr(self, name)(x)
    if self.include_top:
      x = x.astype(jnp.float32).reshape(x.shape[0], -1)  # NHWC order, as Keras' Flatten.
      x = nnx.relu(self.fc2(nnx.relu(self.fc1(x))))
      x = self.predictions(x)
    return x

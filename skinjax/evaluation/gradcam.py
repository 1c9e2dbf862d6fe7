"""Grad-CAM (Selvaraju et al. 2017): where in the image the evidence for a class lies.

It is taken at the backbone's output feature map, the last convolutional block, which the
Classifier pools and feeds to its linear head. Each feature channel is weighted by the spatial
mean of the class logit's gradient; the positive part of the weighted sum, upsampled to the
image, is the heat-map.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from skinjax.evaluation.deferred import matplotlib


def make_gradcam_fn(graphdef: nnx.GraphDef, *, normalise: Callable) -> Callable:
  """(params, rest, uint8 images, class indices) -> (heat-maps (N, H, W) in [0, 1], probabilities).

  `graphdef` must come from a model in inference mode (BatchNorm on its running statistics).
  """

  def gradcam(params, rest, images, class_indices):
    model = nnx.merge(graphdef, params, rest, copy=True)
    features = model.backbone(normalise(images))

    def class_score(feature_map):
      logits = model.logits_from_features(feature_map)
      # Summing over the batch keeps each image's gradient its own: images do not interact.
      return jnp.sum(jnp.take_along_axis(logits, class_indices[:, None], axis=-1)), logits

    gradients, logits = jax.grad(class_score, has_aux=True)(features)
    channel_weights = jnp.mean(gradients.astype(jnp.float32), axis=(1, 2))
    cams = jax.nn.relu(jnp.einsum('nhwc,nc->nhw', features.astype(jnp.float32), channel_weights))
    cams = jax.image.resize(cams, (cams.shape[0], *images.shape[1:3]), method='bilinear')
    peaks = jnp.max(cams, axis=(1, 2), keepdims=True)
    cams = jnp.where(peaks > 0, cams / jnp.where(peaks > 0, peaks, 1.0), 0.0)
    return cams, jax.nn.softmax(logits, axis=-1)

  return gradcam


def overlay(image: np.ndarray, cam: np.ndarray, *, min_side: int = 256,
            alpha: float = 0.45) -> Image.Image:
  """The image beside itself with the heat-map over it in 'jet' colours, upscaled if small.

  Side by side, because the lesion's own colours are what a reader checks the heat against.
  """
  height, width = image.shape[:2]
  scale = max(1, -(-min_side // min(height, width)))
  size = (width * scale, height * scale)
  base = Image.fromarray(image).resize(size, Image.BILINEAR)
  heat = np.asarray(Image.fromarray(cam.astype(np.float32)).resize(size, Image.BILINEAR))
  colours = (matplotlib.colormaps['jet'](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)
  both = Image.new('RGB', (2 * size[0], size[1]))
  both.paste(base, (0, 0))
  both.paste(Image.blend(base, Image.fromarray(colours), alpha), (size[0], 0))
  return both

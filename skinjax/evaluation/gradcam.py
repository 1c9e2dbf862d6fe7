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

from skinjax.evaluation.deferred import pyplot as plt


def make_gradcam_fn(graphdef: nnx.GraphDef, *, normalise: Callable) -> Callable:
  """(params, rest, uint8 images, class indices[, metadata]) -> (heat-maps (N, H, W) in [0, 1],
  probabilities); `metadata` for a model that takes patient metadata (it has no heat-map).

  `graphdef` must come from a model in inference mode (BatchNorm on its running statistics).
  """

  def gradcam(params, rest, images, class_indices, metadata=None):
    model = nnx.merge(graphdef, params, rest, copy=True)
    features = model.backbone(normalise(images))

    def class_score(feature_map):
      logits = model.logits_from_features(feature_map, metadata)
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


def view_caption(colour_corrected: bool) -> str:
  """What the left panel shows: the image exactly as the model received it."""
  return ('Colour-corrected view (Shades of Grey), as the model sees it' if colour_corrected
          else 'The image as the model sees it')


def figure(image: np.ndarray, cam: np.ndarray, *, class_name: str, probability: float,
           colour_corrected: bool, alpha: float = 0.45):
  """A matplotlib figure: the image beside itself with the heat-map of `class_name` over it in
  'jet' colours, captioned with the class, its probability and the view, with a colour bar.

  Side by side, because the lesion's own colours are what a reader checks the heat against.
  """
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.6), layout='constrained')
  fig.suptitle(f'Grad-CAM of {class_name} (probability {probability:.3f})')
  left.imshow(image, interpolation='bilinear')
  left.set_title(view_caption(colour_corrected), fontsize='small', wrap=True)
  right.imshow(image, interpolation='bilinear')
  heat = right.imshow(cam, cmap='jet', vmin=0.0, vmax=1.0, alpha=alpha, interpolation='bilinear')
  right.set_title(f'Where the evidence for {class_name} lies', fontsize='small')
  for axes in (left, right):
    axes.set_axis_off()
  # The map is scaled to its own peak, so colours compare regions within one image only.
  fig.colorbar(heat, ax=right, shrink=0.8, label="Grad-CAM, relative to the image's peak")
  return fig


def save_figure(fig, path) -> None:
  """Writes `fig` as an RGB PNG (no alpha channel: the figure is opaque) and closes it."""
  fig.canvas.draw()
  Image.fromarray(np.asarray(fig.canvas.buffer_rgba())).convert('RGB').save(path)
  plt.close(fig)

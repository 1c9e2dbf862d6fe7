"""A run's model as a deployer calls it: uint8 RGB NHWC views in, class probabilities out.

Everything after the resize and centre crop is inside: the colour constancy when the run uses it,
the backbone's own normalisation, the network in inference mode and the softmax. The convolutions
and max-pools are traced on their portable path (cpu_conv.portable_ops), so that the graph holds
plain Conv and MaxPool operations, which every runtime accelerates.
"""

import contextlib
from typing import Callable

import jax
import jax.numpy as jnp

from skinjax.models import cpu_conv
from skinjax.runtime import steps


# The gains' grid: x * k / 4096 is exact in float32 for every uint8 x and any gain up to 16
# (255 * 16 * 4096 < 2**24), far above the casts of real images.
GAIN_STEPS = 4096


def shades_of_grey(images: jnp.ndarray, power: float) -> jnp.ndarray:
  """augment.shades_of_grey_gains and apply_gains for a uint8 NHWC batch, per image, in jnp.

  The data pipeline estimates the cast in numpy on the whole decoded image; a graph only has the
  view. The estimate is taken on 0..1 values (the gains do not depend on the scale) in float32.
  Like the pipeline, it rounds the corrected image to whole levels, which the model was trained
  on; but first it puts the gains on a grid of 1/4096, so that every product is exact and rounds
  alike in every runtime: with float32 gains straight from the estimate, whose last bit differs
  from runtime to runtime, thousands of the 453 ISIC 2018 test images' pixels rounded the other
  way in onnxruntime than in XLA.
  """
  pixels = images.astype(jnp.float32) / 255.0
  illuminant = jnp.mean(pixels ** power, axis=(1, 2)) ** (1.0 / power)  # (N, 3)
  gains = jnp.linalg.norm(illuminant, axis=-1, keepdims=True) / (jnp.sqrt(3.0) * illuminant)
  # A channel that is black everywhere has no cast to remove: that image is left as it is.
  gains = jnp.where(jnp.all(illuminant > 0, axis=-1, keepdims=True), gains, 1.0)
  gains = jnp.round(gains * GAIN_STEPS) / GAIN_STEPS
  corrected = jnp.round(images.astype(jnp.float32) * gains[:, None, None, :])
  return jnp.clip(corrected, 0, 255).astype(jnp.uint8)


def probabilities_fn(run, *, portable: bool = True) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """images (N, S, S, 3) uint8 -> (N, classes) float32 softmax, for the loaded run `run`.

  `portable=False` keeps skinjax's CPU fast paths: the same function as skinjax runs it, which is
  what an export's speed is compared with.
  """
  predict_step = steps.make_predict_step(run.graphdef, normalise=run.normalise)
  power = run.eval_view.colour_constancy_power

  def probabilities(images):
    if power is not None:
      images = shades_of_grey(images, power)
    with cpu_conv.portable_ops() if portable else contextlib.nullcontext():
      return predict_step(run.params, run.rest, images)

  return probabilities


def jax_probabilities(run, images) -> jax.Array:
  """What the exported graph computes, run by JAX: the reference an export is checked against."""
  return jax.jit(probabilities_fn(run))(images)

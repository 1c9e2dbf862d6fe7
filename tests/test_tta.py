"""Test-time augmentation: which views, and the softmax averaged over them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from skinjax.evaluation import tta
from skinjax.models import registry
from skinjax.runtime import steps


def test_views_are_the_flips_and_the_symmetries_of_the_square():
  image = np.random.default_rng(0).integers(0, 256, (1, 6, 6, 3), dtype=np.uint8)
  expected = {
      'none': [image],
      'flip': [image, image[:, :, ::-1], image[:, ::-1], image[:, ::-1, ::-1]],
      'flip_rot': [np.rot90(im, k, axes=(1, 2)) for k in range(4)
                   for im in (image, image[:, :, ::-1])],
  }
  for mode, want in expected.items():
    got = [np.asarray(view(jnp.asarray(image))) for view in tta.views(mode)]
    assert len(got) == len(want)
    assert len({g.tobytes() for g in got}) == len(got)  # all distinct
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)


def test_unknown_mode_names_the_valid_ones():
  with pytest.raises(ValueError, match='none, flip, flip_rot'):
    tta.with_tta(lambda *a: None, 'rot')


@pytest.mark.parametrize('mode', ['flip', 'flip_rot'])
def test_tta_is_the_mean_softmax_over_the_views(mode):
  model = registry.build_classifier('small_cnn', num_classes=7, dropout_rate=0.0, rngs=nnx.Rngs(0),
                                    widths=(8, 16))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  normalise = lambda x: x.astype(jnp.float32) / 255  # noqa: E731
  images = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  step = jax.jit(tta.with_tta(steps.make_predict_step(graphdef, normalise=normalise), mode))
  flipped = [images, images[:, :, ::-1], images[:, ::-1], images[:, ::-1, ::-1]]
  if mode == 'flip_rot':
    flipped = [np.rot90(im, k, axes=(1, 2)) for k in range(4) for im in (images, images[:, :, ::-1])]
  softmax = jax.jit(lambda x: jax.nn.softmax(nnx.merge(graphdef, params, rest)(normalise(x))))
  expected = np.mean([softmax(v.copy()) for v in flipped], 0)
  np.testing.assert_allclose(step(params, rest, images), expected, rtol=1e-5, atol=1e-6)
  plain = softmax(images)
  assert not np.allclose(expected, plain, atol=1e-6)  # the views do change the prediction

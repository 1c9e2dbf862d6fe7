"""Grad-CAM on a hand-built classifier whose evidence sits in one known region, and on SmallCNN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from skinjax.evaluation import gradcam
from skinjax.models import registry
from skinjax.models.classifier import Classifier


class PooledPixels(nnx.Module):
  """A 'backbone' whose feature map is the image itself, 2x2 average-pooled: feature = colour."""

  num_features = 3

  def __call__(self, x, *, rngs=None):
    return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))


def colour_classifier():
  """Class 0 is evidenced by red, class 1 by green; blue counts against class 0."""
  model = Classifier(PooledPixels(), num_classes=2, dropout_rate=0.0, rngs=nnx.Rngs(0))
  model.head.kernel[...] = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  model.head.bias[...] = jnp.zeros(2)
  model.eval()
  return model


def two_patch_image(size=16):
  """Red in the top-left quadrant, green in the bottom-right one, blue in the top-right one."""
  image = np.zeros((size, size, 3), np.uint8)
  half = size // 2
  image[:half, :half, 0] = 255
  image[half:, half:, 1] = 255
  image[:half, half:, 2] = 255
  return image


def cams_for(model, images, classes):
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  cam_fn = jax.jit(gradcam.make_gradcam_fn(graphdef, normalise=lambda x: x.astype(jnp.float32) / 255))
  cams, probs = cam_fn(params, rest, images, np.asarray(classes))
  return np.asarray(cams), np.asarray(probs)


def test_heat_map_peaks_where_the_class_evidence_is():
  image = two_patch_image()
  cams, probs = cams_for(colour_classifier(), np.stack([image, image]), [0, 1])
  assert cams.shape == (2, 16, 16)  # upsampled from the 8x8 feature map to the image
  assert (cams >= 0).all() and cams.max(axis=(1, 2)) == pytest.approx([1.0, 1.0])
  # Quadrants of the 16x16 image, less a one-pixel rim where upsampling blends neighbours.
  red, green = (slice(1, 7), slice(1, 7)), (slice(9, 15), slice(9, 15))
  blue, empty = (slice(1, 7), slice(9, 15)), (slice(9, 15), slice(1, 7))
  for cam, evidence in ((cams[0], red), (cams[1], green)):
    assert cam[evidence].min() == pytest.approx(1.0)
    hot_rows, hot_cols = np.nonzero(cam > 0.99)  # the peak: inside the evidence quadrant only
    assert evidence[0].start - 1 <= hot_rows.min() and hot_rows.max() <= evidence[0].stop
    assert evidence[1].start - 1 <= hot_cols.min() and hot_cols.max() <= evidence[1].stop
  # Regions without evidence for the class (and blue, which counts against class 0) stay at 0.
  for region in (green, blue, empty):
    assert cams[0][region].max() == pytest.approx(0.0, abs=1e-6)
  np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_no_evidence_gives_an_all_zero_map():
  image = np.zeros((16, 16, 3), np.uint8)
  image[..., 2] = 255  # only blue: nothing speaks for class 0
  cams, _ = cams_for(colour_classifier(), image[None], [0])
  assert (cams == 0).all()


@pytest.fixture(scope='module')
def small_cnn():
  """A real backbone, two narrow stages: a 32x32 image gives an 8x8 feature map."""
  model = registry.build_classifier('small_cnn', num_classes=7, dropout_rate=0.5, rngs=nnx.Rngs(1),
                                    widths=(8, 16))
  model.eval()
  return model


def test_gradcam_of_a_real_backbone_is_a_normalised_map_of_the_image_size(small_cnn):
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
  cams, probs = cams_for(small_cnn, images, [0, 4, 6])
  assert cams.shape == (3, 32, 32) and (cams >= 0).all() and (cams <= 1 + 1e-6).all()
  assert probs.shape == (3, 7)


@pytest.mark.parametrize('colour_corrected, view', [
    (True, 'Colour-corrected view (Shades of Grey), as the model sees it'),
    (False, 'The image as the model sees it')])
def test_figure_is_captioned_with_class_probability_view_and_colour_bar(tmp_path, colour_corrected,
                                                                         view):
  image = two_patch_image(24)
  cam = np.zeros((24, 24))
  cam[:12, :12] = 1.0
  fig = gradcam.figure(image, cam, class_name='mel', probability=0.8766,
                       colour_corrected=colour_corrected)
  left, right, colour_bar = fig.axes
  assert fig.get_suptitle() == 'Grad-CAM of mel (probability 0.877)'
  assert left.get_title() == view
  np.testing.assert_array_equal(left.images[0].get_array(), image)
  # The right panel: the same image under the heat-map, which the colour bar scales from 0 to 1.
  base, heat = right.images
  np.testing.assert_array_equal(base.get_array(), image)
  np.testing.assert_array_equal(heat.get_array(), cam)
  assert heat.get_cmap().name == 'jet' and heat.get_clim() == (0.0, 1.0)
  assert colour_bar.get_ylabel() == "Grad-CAM, relative to the image's peak"
  assert colour_bar.get_ylim() == (0.0, 1.0)
  gradcam.save_figure(fig, tmp_path / 'cam.png')
  with Image.open(tmp_path / 'cam.png') as saved:
    assert saved.mode == 'RGB' and min(saved.size) >= 256
    picture = np.asarray(saved).astype(int)

  def pixel(axes, x, y):  # of image coordinates (x, y) in the saved picture
    column, row = axes.transData.transform((x, y))
    return picture[picture.shape[0] - int(row), int(column)]

  np.testing.assert_allclose(pixel(left, 5, 5), [255, 0, 0], atol=2)  # the red patch, unchanged
  # Over the hot quadrant 'jet' adds its dark red; over the cold one its dark blue.
  assert pixel(right, 5, 5)[2] < 60 and pixel(right, 18, 18)[2] > pixel(left, 18, 18)[2] + 40

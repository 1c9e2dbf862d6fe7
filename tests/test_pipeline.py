"""The grain pipelines: determinism, checkpointable position, sharding, padding, balance."""

import io
import re

import ml_collections
import numpy as np
import pytest
from PIL import Image

from skinjax.data import augment
from skinjax.data import pipeline
from skinjax.data import synthetic
from skinjax.training import config_checks
from tests.helpers import tiny_config


@pytest.fixture(scope='module')
def source():
  return synthetic.SyntheticSource(120, seed=3)


def take(dataset, n):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(n)]


def train_data(source, config, **kwargs):
  indices = np.arange(len(source))
  return pipeline.train_dataset(source, indices, source.metadata['label'], config=config,
                                num_epochs=3, **{'process_batch_size': 8, **kwargs})


def test_train_batches_are_uint8_and_deterministic(source):
  config = tiny_config()
  first, again = take(train_data(source, config), 4), take(train_data(source, config), 4)
  assert first[0]['image'].dtype == np.uint8 and first[0]['image'].shape == (8, 24, 24, 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])


def test_restored_iterator_continues_at_the_same_example(source):
  iterator = iter(train_data(source, tiny_config()))
  for _ in range(3):
    next(iterator)
  saved = iterator.get_state()
  expected = [next(iterator) for _ in range(2)]
  fresh = iter(train_data(source, tiny_config()))
  fresh.set_state(saved)
  for want in expected:
    np.testing.assert_array_equal(next(fresh)['image'], want['image'])


def test_processes_split_the_single_process_stream(source):
  """Two processes with half the batch each: their blocks, joined, are the one-process batch."""
  config = tiny_config()  # augmentation on: it too must not depend on the process count
  whole = take(train_data(source, config, process_batch_size=8), 5)
  parts = [take(train_data(source, config, process_batch_size=4, process_index=p, process_count=2), 5)
           for p in (0, 1)]
  for step, batch in enumerate(whole):
    for key in ('image', 'label'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][step][key], parts[1][step][key]]), batch[key])


def test_epochs_visit_every_example_once(source):
  config = tiny_config()
  labels = np.concatenate([b['label'] for b in take(train_data(source, config, process_batch_size=10), 12)])
  np.testing.assert_array_equal(np.bincount(labels, minlength=7),
                                np.bincount(source.metadata['label'], minlength=7))


def test_balanced_sampling_draws_classes_about_equally(source):
  config = tiny_config(**{'train.balanced_sampling': True})
  labels = np.concatenate([b['label'] for b in take(train_data(source, config, process_batch_size=30), 12)])
  counts = np.bincount(labels, minlength=7)
  assert counts.min() > 0.5 * counts.mean() and counts.max() < 1.5 * counts.mean()


@pytest.mark.parametrize('process_count', [1, 2])
def test_eval_pads_and_masks_so_each_example_counts_once(source, process_count):
  indices = np.arange(0, 101, 2)  # 51 examples: not a multiple of the batch
  positions = []
  for process in range(process_count):
    batches = list(pipeline.eval_dataset(source, indices, pipeline.EvalView(24, 'center_crop'),
                                         global_batch_size=16, process_index=process,
                                         process_count=process_count))
    assert {b['image'].shape[0] for b in batches} == {16 // process_count}
    for batch in batches:
      assert np.all((batch['mask'] == 1) == (batch['position'] >= 0))
      positions += list(batch['position'][batch['mask'] == 1])
      labels = source.metadata['label'][indices[batch['position'][batch['mask'] == 1]]]
      np.testing.assert_array_equal(batch['label'][batch['mask'] == 1], labels)
  assert sorted(positions) == list(range(len(indices)))


def test_eval_resize_keeps_aspect_with_center_crop():
  image = np.zeros((30, 40, 3), np.uint8)
  image[:, :3] = 255  # a white band at the left edge, well outside the central square (x 5..35)
  out = augment.eval_resize(augment.to_pil(image), 20, 'center_crop')
  assert out.shape == (20, 20, 3) and out.max() == 0
  assert augment.eval_resize(augment.to_pil(image), 20, 'squash')[:, 0].min() == 255


def test_random_resized_crop_and_flips_keep_shape_and_dtype():
  rng = np.random.default_rng(0)
  spec = pipeline.AugmentSpec.from_config(tiny_config().data.augment)
  image = rng.integers(0, 256, (45, 60, 3), dtype=np.uint8)
  views = [augment.train_view(image, 32, spec, 'center_crop', rng) for _ in range(5)]
  assert all(v.shape == (32, 32, 3) and v.dtype == np.uint8 for v in views)
  assert len({v.tobytes() for v in views}) == 5


def _lesion_like(seed=0, shape=(60, 80)):
  """A smooth, reddish-brown image in mid-range values, so that a colour cast never clips."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:shape[0], :shape[1]] / max(shape)
  base = 90 + 50 * np.sin(5 * x + 3 * y)[..., None] + rng.normal(0, 6, shape + (1,))
  return np.clip(base * np.array([1.3, 0.9, 0.8]), 0, 255)


def test_shades_of_grey_removes_a_colour_cast_and_leaves_a_neutral_image_alone():
  image = _lesion_like()
  cast = np.array([1.15, 0.95, 0.7])  # a warm dermoscope light
  # The cast image is corrected to the same image, up to one brightness factor for all channels.
  corrected = image * augment.shades_of_grey_gains(image, 6)
  corrected_cast = image * cast * augment.shades_of_grey_gains(image * cast, 6)
  ratio = corrected_cast / corrected
  np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
  assert abs(ratio.flat[0] - 1) < 0.2 and not np.allclose(cast, cast[0])
  # ... whose p-mean illuminant is neutral (grey), with the original estimate's length.
  def illuminant(x):
    return np.mean(x.reshape(-1, 3) ** 6, axis=0) ** (1 / 6)
  np.testing.assert_allclose(illuminant(corrected), np.linalg.norm(illuminant(image)) / np.sqrt(3),
                             rtol=1e-5)
  grey = np.repeat(image[..., :1], 3, axis=-1)
  np.testing.assert_allclose(augment.shades_of_grey_gains(grey, 6), 1.0, rtol=1e-6)
  # p=1 is the grey-world assumption: gains proportional to 1 / channel mean.
  gains = augment.shades_of_grey_gains(image, 1)
  means = image.reshape(-1, 3).mean(axis=0)
  np.testing.assert_allclose(gains / gains[0], means[0] / means, rtol=1e-5)
  np.testing.assert_array_equal(augment.shades_of_grey_gains(np.zeros((4, 4, 3)), 6), 1.0)


def test_colour_constancy_gives_training_evaluation_and_prediction_the_same_correction():
  """A record and its colour-cast copy look alike to the model only with colour constancy on,
  in the training views (same random draw), the evaluation view and Grad-CAM's view."""
  image = _lesion_like(seed=1)
  records = [{'image': np.rint(image).astype(np.uint8), 'label': 0},
             {'image': np.rint(image * [1.1, 0.95, 0.75]).astype(np.uint8), 'label': 0}]
  spec = pipeline.AugmentSpec.from_config(tiny_config(**{
      'data.augment.brightness': 0.0, 'data.augment.contrast': 0.0,
      'data.augment.saturation': 0.0}).data.augment)

  def gap(power):
    train = [pipeline.TrainTransform(records, 32, spec, 'center_crop', power).random_map(
        i, np.random.default_rng(7)) for i in (0, 1)]
    evals = [pipeline.EvalTransform(records, np.arange(2),
                                    pipeline.EvalView(32, 'center_crop', power)).map(i)
             for i in (0, 1)]
    return [np.abs(a['image'].astype(int) - b['image'].astype(int)).mean()
            for a, b in (train, evals)]

  assert min(gap(None)) > 10  # the cast is plain to see without correction
  assert max(gap(6.0)) < 1.5  # and gone, to within rounding, with it
  on = tiny_config(**{'data.colour_constancy': 'shades_of_grey', 'data.shades_of_grey_power': 4.0})
  assert augment.colour_constancy_power(on.data) == 4.0
  assert augment.colour_constancy_power(tiny_config().data) is None
  # A run saved before the keys existed trained without colour constancy, larger views or a
  # moving average of its weights, and its reports had their figures.
  from skinjax.runtime import saved_config
  saved = {'data': {'image_size': 24, 'resize': 'center_crop'}}
  old = ml_collections.ConfigDict(saved_config.upgrade(saved))
  assert augment.colour_constancy_power(old.data) is None
  assert augment.eval_image_size(old.data) == 24
  assert old.eval.figures is True
  assert old.train.ema_decay == 0.0
  assert old.train.logit_adjustment == 0.0


@pytest.mark.parametrize('key, value, message', [
    ('data.colour_constancy', 'grey_world', "config.data.colour_constancy='grey_world' is not one of none, shades_of_grey"),
    ('data.shades_of_grey_power', 0.0, 'config.data.shades_of_grey_power=0.0 must be positive'),
])
def test_colour_constancy_settings_are_checked_before_any_work(key, value, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    config_checks.validate(tiny_config(**{key: value}))


def test_evaluation_views_of_larger_images_have_the_training_images_detail():
  """EvalView.source_side: an image whose shorter side is longer is shrunk to it (PIL bilinear,
  aspect kept) before its view is taken; an image no larger is viewed exactly as without it."""
  rng = np.random.default_rng(0)
  large = rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)  # a sharper camera's 600x450
  small = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)  # as large as the training images
  view = pipeline.EvalView(176, 'center_crop', 6.0, source_side=150)
  shrunk = np.asarray(Image.fromarray(large).resize((200, 150), Image.BILINEAR))
  np.testing.assert_array_equal(view(large), pipeline.EvalView(176, 'center_crop', 6.0)(shrunk))
  assert np.abs(view(large).astype(int)
                - pipeline.EvalView(176, 'center_crop', 6.0)(large).astype(int)).mean() > 5
  np.testing.assert_array_equal(view(small), pipeline.EvalView(176, 'center_crop', 6.0)(small))
  # JPEGs are decoded at the shrunk size's scale (draft), then shrunk: close to the array's view.
  buffer = io.BytesIO()
  Image.fromarray(large).save(buffer, format='JPEG', quality=95)
  assert augment.image_size(buffer.getvalue()) == (600, 450) == augment.image_size(large)
  assert np.abs(view(buffer.getvalue()).astype(int) - view(large).astype(int)).mean() < 12
  # Never enlarged; the aspect ratio is kept.
  assert augment.shrink_to_short_side(Image.fromarray(small), 300).size == (200, 150)
  assert augment.shrink_to_short_side(Image.fromarray(large), 100).size == (133, 100)


def test_the_training_short_side_is_the_main_datasets_median():
  """handle.median_training_short_side: the median shorter side of the main dataset's training
  images, whatever size its extras have."""
  from skinjax.data import handle

  class Images:
    def __init__(self, shorter_sides, train):
      self.source = [{'image': np.zeros((side, side + 10, 3), np.uint8)} for side in shorter_sides]
      self.splits = {'train': np.asarray(train)}

  main = Images([100, 150, 150, 200, 300, 999], train=[0, 1, 2, 3, 4])  # 999: a test image
  assert handle.median_training_short_side(main) == 150

  class WithExtras:  # as combined.CombinedDataset: `main`, and a train split over every source
    def __init__(self, main):
      self.main, self.source = main, main.source + [{'image': np.zeros((84, 84, 3), np.uint8)}] * 9
      self.splits = {'train': np.arange(len(self.source))}

  assert handle.median_training_short_side(WithExtras(main)) == 150

"""The augmentations that imitate other cameras: range, shape, determinism, and off by default."""

import colorsys
import io

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import base
from skinjax.data import augment
from skinjax.runtime import saved_config
from skinjax.training import config_checks

SETTINGS = {'gamma': 0.4, 'hue': 0.1, 'channel_gain': 0.3, 'sharpness': 0.9, 'blur': 1.5}


def photo(seed: int = 0, size: int = 32) -> np.ndarray:
  """A smooth colour gradient with noise: every channel spans most of 0..255."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 1, size)
  image = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 1 - ramp) / 2,
                    np.outer(ramp, ramp)], axis=-1) * 255
  return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)


def only(key: str, value: float | None = None) -> ml_collections.ConfigDict:
  cfg = base.get_config().data.augment
  cfg[key] = SETTINGS[key] if value is None else value
  return cfg


@pytest.mark.parametrize('key', sorted(SETTINGS))
def test_each_keeps_shape_and_type_and_is_deterministic_for_a_seed(key):
  image = photo()
  first = augment.camera_jitter(image, only(key), np.random.default_rng(7))
  again = augment.camera_jitter(image, only(key), np.random.default_rng(7))
  other = augment.camera_jitter(image, only(key), np.random.default_rng(8))
  assert first.shape == image.shape and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)  # the seed matters
  assert not np.array_equal(first, image)  # and it does something


def test_all_off_by_default_and_then_nothing_is_drawn():
  cfg = base.get_config().data.augment
  image, rng = photo(), np.random.default_rng(3)
  assert augment.camera_jitter(image, cfg, rng) is image
  assert augment.random_power(6.0, cfg, rng) == 6.0
  # The generator was not advanced: runs without these keys see the same random stream as before.
  assert rng.random() == np.random.default_rng(3).random()


def test_gamma_is_the_tone_curve_and_keeps_black_and_white():
  image = np.array([[[0, 64, 255]]], np.uint8)
  out = augment.camera_jitter(image, only('gamma'), np.random.default_rng(1))
  gamma = np.random.default_rng(1).uniform(0.6, 1.4)
  np.testing.assert_array_equal(out, np.rint(255 * (image / 255) ** gamma).astype(np.uint8))
  assert out[0, 0, 0] == 0 and out[0, 0, 2] == 255


def test_hue_turns_the_hue_and_keeps_saturation_and_value():
  image = np.full((4, 4, 3), (200, 80, 40), np.uint8)  # a saturated orange
  out = augment.camera_jitter(image, only('hue', 0.25), np.random.default_rng(2))
  before = colorsys.rgb_to_hsv(*(image[0, 0] / 255))
  after = colorsys.rgb_to_hsv(*(out[0, 0] / 255))
  shift = round(np.random.default_rng(2).uniform(-0.25, 0.25) * 256) / 256
  assert (after[0] - before[0]) % 1 == pytest.approx(shift % 1, abs=0.01)
  assert after[1:] == pytest.approx(before[1:], abs=0.02)


def test_channel_gain_casts_colour_and_keeps_brightness():
  image = photo()
  out = augment.camera_jitter(image, only('channel_gain'), np.random.default_rng(4))
  ratio = out.reshape(-1, 3).mean(0) / image.reshape(-1, 3).mean(0)
  assert np.ptp(ratio) > 0.05  # the channels moved apart: a cast
  assert out.mean() == pytest.approx(image.mean(), rel=0.05)  # the gains average 1


def test_blur_and_softening_lower_the_detail_sharpening_raises_it():
  image = photo()

  def detail(x):
    return np.abs(np.diff(x.astype(float), axis=0)).mean()

  blurred = augment.camera_jitter(image, only('blur', 2.0), np.random.default_rng(5))
  softer = augment.camera_jitter(image, only('sharpness'), np.random.default_rng(0))
  factor = np.random.default_rng(0).uniform(0.1, 1.9)
  assert detail(blurred) < detail(image)
  assert (detail(softer) < detail(image)) == (factor < 1)


def test_random_shades_of_grey_powers_are_drawn_in_their_range():
  cfg = base.get_config().data.augment
  cfg.shades_of_grey_powers = (2.0, 8.0)
  draws = [augment.random_power(6.0, cfg, np.random.default_rng(seed)) for seed in range(50)]
  assert all(2.0 <= p <= 8.0 for p in draws) and len(set(draws)) == 50
  assert augment.random_power(None, cfg, np.random.default_rng(0)) is None  # correction off


def test_train_view_applies_them_deterministically():
  config = base.get_config()
  for key, value in SETTINGS.items():
    config.data.augment[key] = value
  config.data.augment.shades_of_grey_powers = (2.0, 8.0)
  buffer = io.BytesIO()
  Image.fromarray(photo(size=96)).save(buffer, format='JPEG')

  def view(seed):
    return augment.train_view(buffer.getvalue(), 48, config.data.augment, 'center_crop',
                              np.random.default_rng(seed), colour_constancy_power=6.0)

  assert view(1).shape == (48, 48, 3) and view(1).dtype == np.uint8
  np.testing.assert_array_equal(view(1), view(1))
  assert not np.array_equal(view(1), view(2))


def test_camera_probability_changes_that_fraction_of_the_views():
  """A view either gets the camera changes or is the view the same seed gives without them."""
  buffer = io.BytesIO()
  Image.fromarray(photo(size=64)).save(buffer, format='JPEG')

  def view(seed, probability, camera_on=True):
    cfg = base.get_config().data.augment
    cfg.camera_probability = probability
    if camera_on:
      cfg.update(SETTINGS, shades_of_grey_powers=(2.0, 10.0))
    return augment.train_view(buffer.getvalue(), 32, cfg, 'center_crop',
                              np.random.default_rng(seed), colour_constancy_power=6.0)

  changed = [not np.array_equal(view(seed, 0.5), view(seed, 0.5, camera_on=False))
             for seed in range(40)]
  assert 10 <= sum(changed) <= 30, sum(changed)
  np.testing.assert_array_equal(view(3, 0.5), view(3, 0.5))
  assert all(np.array_equal(view(seed, 0.0), view(seed, 0.0, camera_on=False))
             for seed in range(5))
  # 1.0: every view gets them. (That it draws nothing for the choice, so that earlier runs keep
  # their stream, is what the two-phase goldens of tests/test_phase_plan.py show.)
  assert not any(np.array_equal(view(seed, 1.0), view(seed, 1.0, camera_on=False))
                 for seed in range(5))


@pytest.mark.parametrize('key, value', [('gamma', -0.1), ('hue', 0.6), ('channel_gain', 1.0),
                                        ('sharpness', 1.5), ('blur', -1.0),
                                        ('shades_of_grey_powers', (8.0, 2.0)),
                                        ('shades_of_grey_powers', (6.0,)),
                                        ('camera_probability', 1.5),
                                        ('camera_probability', -0.1)])
def test_values_out_of_range_are_one_clear_error(key, value):
  config = base.get_config()
  config.data.augment[key] = value
  with pytest.raises(ValueError, match=rf'config\.data\.augment\.{key}='):
    config_checks.validate(config)


def test_powers_without_colour_constancy_warn():
  config = base.get_config()
  config.data.augment.shades_of_grey_powers = (2.0, 8.0)
  assert any('shades_of_grey_powers' in line for line in config_checks.config_warnings(config))
  config.data.colour_constancy = 'shades_of_grey'
  assert not any('shades_of_grey_powers' in line for line in config_checks.config_warnings(config))


def test_runs_saved_before_these_keys_read_as_trained_without_them():
  saved = base.get_config().to_dict()
  for key in (*augment.CAMERA_KEYS, 'shades_of_grey_powers', 'camera_probability'):
    del saved['data']['augment'][key]
  upgraded = saved_config.upgrade(saved)['data']['augment']
  assert all(upgraded[key] == 0 for key in augment.CAMERA_KEYS)
  assert upgraded['shades_of_grey_powers'] == [] and upgraded['camera_probability'] == 1.0


def test_the_domain_recipe_is_the_transfer_recipe_with_camera_augmentation():
  """configs/cpu_domains.py's docstring compares it with cpu_transfer.py: only the augmentations
  that imitate other cameras may differ, and they must be on and valid."""
  from configs import cpu_domains, cpu_transfer  # pylint: disable=import-outside-toplevel
  domains, transfer = cpu_domains.get_config(), cpu_transfer.get_config()
  config_checks.validate(domains)
  changed = {key for key in domains.data.augment
             if domains.data.augment[key] != transfer.data.augment[key]}
  assert changed and changed <= {*augment.CAMERA_KEYS, 'brightness', 'contrast', 'saturation',
                                 'shades_of_grey_powers'}
  for key in changed:
    domains.data.augment[key] = transfer.data.augment[key]
  assert domains.to_dict() == transfer.to_dict()

"""Image decoding, resizing and training augmentation, on the host in uint8.

Everything here runs inside grain workers; the device only ever receives uint8 batches and
normalises them inside the jitted step.
"""

import io
import math

import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageFilter


def to_pil(image, min_side: int | None = None) -> Image.Image:
  """Decodes JPEG bytes (or wraps a uint8 array) as an RGB PIL image.

  With `min_side`, JPEG decoding uses DCT scaling (`draft`) to skip resolution we would throw
  away anyway, which makes decoding large files several times faster.
  """
  if isinstance(image, np.ndarray) and image.dtype == np.uint8:
    return Image.fromarray(image)
  pil = Image.open(io.BytesIO(bytes(image)))
  if min_side is not None:
    pil.draft('RGB', (min_side, min_side))
  return pil.convert('RGB')


def eval_resize(pil: Image.Image, size: int, mode: str) -> np.ndarray:
  """Deterministic evaluation view: short side to `size` then centre crop, or a plain squash."""
  if mode == 'squash':
    return np.asarray(pil.resize((size, size), Image.BILINEAR))
  if mode != 'center_crop':
    raise ValueError(f"config.data.resize={mode!r}: use 'center_crop' or 'squash'.")
  w, h = pil.size
  side = min(w, h)
  box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
  return np.asarray(pil.resize((size, size), Image.BILINEAR, box=box))


def shades_of_grey_gains(image: np.ndarray, power: float) -> np.ndarray:
  """Per-channel gains that make the image's Shades of Grey illuminant estimate neutral.

  The estimate is each channel's Minkowski p-mean, (mean(I_c ** p)) ** (1/p): p=1 is grey world,
  p=inf is max-RGB, and p=6 is what the ISIC 2017-2019 winners used against the colour casts of
  different dermoscopes (Barata et al. 2015). The gains keep the estimate's length, so a neutral
  image is left as it is and only the cast is removed.
  """
  pixels = np.asarray(image, np.float64).reshape(-1, 3)
  illuminant = np.mean(pixels ** power, axis=0) ** (1.0 / power)
  if not np.all(illuminant > 0):  # a channel that is black everywhere has no cast to remove
    return np.ones(3, np.float32)
  return (np.linalg.norm(illuminant) / (np.sqrt(3.0) * illuminant)).astype(np.float32)


def apply_gains(image: np.ndarray, gains: np.ndarray | None) -> np.ndarray:
  if gains is None:
    return image
  return np.clip(np.rint(image.astype(np.float32) * gains), 0, 255).astype(np.uint8)


def random_resized_crop(pil: Image.Image, size: int, scale, ratio, rng: np.random.Generator):
  """Inception-style crop: a random area fraction and aspect ratio, resized to size x size."""
  w, h = pil.size
  area = w * h
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    cw = int(round(math.sqrt(target_area * aspect)))
    ch = int(round(math.sqrt(target_area / aspect)))
    if 0 < cw <= w and 0 < ch <= h:
      x0 = rng.integers(0, w - cw + 1)
      y0 = rng.integers(0, h - ch + 1)
      return np.asarray(pil.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch)))
  return eval_resize(pil, size, 'center_crop')  # fall back like torchvision does


def colour_jitter(image: np.ndarray, cfg: ml_collections.ConfigDict, rng: np.random.Generator):
  if not (cfg.brightness or cfg.contrast or cfg.saturation):
    return image
  x = image.astype(np.float32)
  if cfg.brightness:
    x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
  if cfg.contrast:
    mean = x.mean()
    x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
  if cfg.saturation:
    grey = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = (x - grey[..., None]) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + grey[..., None]
  return np.clip(x, 0, 255).astype(np.uint8)


# Keys of config.data.augment that imitate other cameras; 0 (or an empty range) turns each off,
# and one that is off draws nothing from the generator, so runs without them are unchanged.
CAMERA_KEYS = ('gamma', 'hue', 'channel_gain', 'sharpness', 'blur')


def camera_jitter(image: np.ndarray, cfg: ml_collections.ConfigDict, rng: np.random.Generator):
  """Another camera's rendering of a uint8 view: tone curve, hue, colour cast, focus.

  - gamma g: the tone curve 255 * (x / 255) ** gamma, gamma uniform in [1 - g, 1 + g];
  - hue h: every pixel's hue turned by up to h of the colour circle (0.05: 18 degrees);
  - channel_gain c: each channel scaled by [1 - c, 1 + c], brightness kept: a colour cast such as
    another dermoscope's light gives;
  - sharpness s: PIL's sharpness factor in [1 - s, 1 + s] (below 1 softer, above crisper);
  - blur b: a Gaussian blur of sigma uniform in [0, b] pixels, defocus.
  """
  if not any(getattr(cfg, key) for key in CAMERA_KEYS):
    return image
  x = image
  if cfg.gamma:
    gamma = rng.uniform(1 - cfg.gamma, 1 + cfg.gamma)
    x = np.rint(255.0 * (x.astype(np.float32) / 255.0) ** gamma).astype(np.uint8)
  if cfg.hue:
    hsv = np.asarray(Image.fromarray(x).convert('HSV')).copy()
    shift = int(round(rng.uniform(-cfg.hue, cfg.hue) * 256))
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + shift) % 256  # hue is a circle
    x = np.asarray(Image.fromarray(hsv, 'HSV').convert('RGB'))
  if cfg.channel_gain:
    gains = rng.uniform(1 - cfg.channel_gain, 1 + cfg.channel_gain, 3)
    x = apply_gains(x, (gains * 3 / gains.sum()).astype(np.float32))
  if cfg.sharpness:
    factor = rng.uniform(1 - cfg.sharpness, 1 + cfg.sharpness)
    x = np.asarray(ImageEnhance.Sharpness(Image.fromarray(x)).enhance(factor))
  if cfg.blur:
    sigma = rng.uniform(0, cfg.blur)
    x = np.asarray(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))
  return x


def random_power(power: float | None, cfg: ml_collections.ConfigDict,
                 rng: np.random.Generator) -> float | None:
  """The Shades of Grey power of one training view: config.data.augment.shades_of_grey_powers
  (low, high) draws it uniformly, so that the model sees casts removed more or less fully, as
  other estimates than the evaluation's would; the configured power otherwise."""
  powers = tuple(cfg.shades_of_grey_powers)
  if power is None or not powers:
    return power
  return float(rng.uniform(*powers))


def colour_gains(pil: Image.Image, power: float | None) -> np.ndarray | None:
  """The colour constancy gains of the whole decoded image (None: no colour constancy).

  They are estimated on the whole image and applied to the view, so that a training crop, the
  evaluation's centre crop and each TTA view of one image get the same correction.
  """
  return None if power is None else shades_of_grey_gains(np.asarray(pil), power)


def image_size(image) -> tuple[int, int]:
  """(width, height) of JPEG bytes (read from the header alone) or of a uint8 array."""
  if isinstance(image, np.ndarray):
    return image.shape[1], image.shape[0]
  return Image.open(io.BytesIO(bytes(image))).size


def shrink_to_short_side(pil: Image.Image, side: int,
                         resample: int = Image.Resampling.BILINEAR) -> Image.Image:
  """`pil` with its shorter side at most `side`, aspect kept; never enlarged."""
  width, height = pil.size
  if min(width, height) <= side:
    return pil
  scale = side / min(width, height)
  # The shorter side comes out at exactly `side`, the longer at `side` or more.
  return pil.resize((max(side, round(width * scale)), max(side, round(height * scale))), resample)


def draft_size(size: int, source_side: int | None) -> int:
  """The size JPEGs are decoded at (PIL's draft) for a view of `size`, shrunk to `source_side`."""
  return min(size, source_side) if source_side else size


def eval_view(image, size: int, resize_mode: str, colour_constancy_power: float | None = None,
              source_side: int | None = None):
  """The deterministic view evaluation and prediction see, as uint8 (size, size, 3).

  With `source_side`, an image whose shorter side is longer is first shrunk to it: a sharper
  camera's image then shows no finer detail than the training images did.
  """
  pil = to_pil(image, draft_size(size, source_side))
  if source_side:
    pil = shrink_to_short_side(pil, source_side)
  gains = colour_gains(pil, colour_constancy_power)
  return np.ascontiguousarray(apply_gains(eval_resize(pil, size, resize_mode), gains))


def train_view(image, size: int, cfg: ml_collections.ConfigDict, resize_mode: str,
               rng: np.random.Generator, colour_constancy_power: float | None = None) -> np.ndarray:
  """One augmented training view of a record's image, as uint8 (size, size, 3)."""
  # Decode at about twice the output size: enough for the tightest random crop we take.
  pil = to_pil(image, min_side=2 * size)
  # Drawn only below 1, so that runs where every view gets them keep their random stream.
  camera = cfg.camera_probability >= 1 or rng.random() < cfg.camera_probability
  power = random_power(colour_constancy_power, cfg, rng) if camera else colour_constancy_power
  gains = colour_gains(pil, power)
  if cfg.random_resized_crop:
    out = random_resized_crop(pil, size, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), rng)
  else:
    out = eval_resize(pil, size, resize_mode)
  if cfg.hflip and rng.random() < 0.5:
    out = out[:, ::-1]
  if cfg.vflip and rng.random() < 0.5:
    out = out[::-1]
  if cfg.rot90:
    out = np.rot90(out, k=int(rng.integers(0, 4)))
  # The jitter comes after the correction: it then varies a neutral image, as intended.
  out = colour_jitter(apply_gains(out, gains), cfg, rng)
  return np.ascontiguousarray(camera_jitter(out, cfg, rng) if camera else out)


def eval_image_size(data_config: ml_collections.ConfigDict) -> int:
  """The side of the evaluation views: config.data.eval_image_size, or the training size."""
  return data_config.eval_image_size or data_config.image_size  # 0: the same


def eval_source_side(data_config: ml_collections.ConfigDict) -> int | None:
  """The shorter side evaluation views shrink larger images to, None when they are taken as
  they come (config.data.match_training_resolution and training_short_side)."""
  if not data_config.match_training_resolution:
    return None
  return data_config.training_short_side or None


def colour_constancy_power(data_config: ml_collections.ConfigDict) -> float | None:
  """config.data's colour constancy as the Shades of Grey power, None when it is off."""
  if data_config.colour_constancy == 'none':
    return None
  return float(data_config.shades_of_grey_power)

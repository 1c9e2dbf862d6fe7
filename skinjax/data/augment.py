"""Image decoding, resizing and training augmentation, on the host in uint8.

Everything here runs inside grain workers; the device only ever receives uint8 batches and
normalises them inside the jitted step.
"""

import io
import math

import ml_collections
import numpy as np
from PIL import Image


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


def train_view(image, size: int, cfg: ml_collections.ConfigDict, resize_mode: str,
               rng: np.random.Generator) -> np.ndarray:
  """One augmented training view of a record's image, as uint8 (size, size, 3)."""
  # Decode at about twice the output size: enough for the tightest random crop we take.
  pil = to_pil(image, min_side=2 * size)
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
  return np.ascontiguousarray(colour_jitter(out, cfg, rng))

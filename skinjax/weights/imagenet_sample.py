"""A labelled folder of ImageNet photographs, read for top-1/top-5 checks of ImageNet weights.

The layout is that of ../shared/data/imagenet_sample: `labels.csv` (file, wnid, imagenet_index,
name) beside `images/`. Images get the standard single-crop evaluation: the centre square of
224/256 of the short side, resized (bicubic) to the model's input size.

Numpy and PIL only, so that the reference script (scripts/lite_reference_logits.py, run with
torch and without jax) loads this very file and preprocesses exactly as skinjax does.
"""

import csv
import dataclasses
import pathlib

import numpy as np
from PIL import Image

LABELS_FILE = 'labels.csv'
IMAGES_DIR = 'images'
CENTRE_CROP_FRACTION = 224 / 256


@dataclasses.dataclass(frozen=True)
class LabelledImage:
  path: pathlib.Path
  imagenet_index: int
  name: str


def read_labels(sample_dir: str | pathlib.Path) -> list[LabelledImage]:
  """The sample's images and their ImageNet class indices, in labels.csv order."""
  sample_dir = pathlib.Path(sample_dir).expanduser()
  labels = sample_dir / LABELS_FILE
  if not labels.is_file():
    raise FileNotFoundError(f'{sample_dir} has no {LABELS_FILE}: give a folder laid out like '
                            '../shared/data/imagenet_sample (labels.csv and images/).')
  try:
    with open(labels, newline='') as f:
      rows = list(csv.DictReader(f))
  except (UnicodeDecodeError, csv.Error) as error:
    raise ValueError(f'{labels} is not a CSV text file ({error}); expected the columns '
                     'file,wnid,imagenet_index,name.') from None
  missing = {'file', 'imagenet_index'} - set(rows[0] if rows else ())
  if missing:
    raise ValueError(f'{labels} lacks the column(s) {", ".join(sorted(missing))}; expected '
                     'file,wnid,imagenet_index,name.')
  images = [LabelledImage(sample_dir / IMAGES_DIR / row['file'], int(row['imagenet_index']),
                          row.get('name', '')) for row in rows]
  absent = [str(image.path) for image in images if not image.path.is_file()]
  if absent:
    raise FileNotFoundError(f'{len(absent)} image(s) of {labels} are missing, e.g. {absent[0]}.')
  return images


def centre_crop(path: str | pathlib.Path, size: int) -> np.ndarray:
  """(size, size, 3) uint8 RGB: the centre square of 224/256 of the short side, bicubic to `size`."""
  try:
    with Image.open(path) as image:
      image = image.convert('RGB')
      width, height = image.size
      side = min(width, height) * CENTRE_CROP_FRACTION
      left, top = (width - side) / 2, (height - side) / 2
      return np.asarray(image.resize((size, size), Image.BICUBIC,
                                     box=(left, top, left + side, top + side)), np.uint8)
  except (OSError, ValueError) as error:
    raise ValueError(f'Cannot read the image {path}: {error}') from error

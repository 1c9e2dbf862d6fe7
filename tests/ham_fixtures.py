"""Small fake HAM10000 downloads, laid out like the real ones, for tests.

`make_kaggle_folder` writes random-colour JPEGs and a metadata CSV with every column
(some ages empty, as in the real file). Every class is present as soon as there are at
least 7 lesions; lesion i has class CLASS_NAMES[i % 7].
"""

from __future__ import annotations

import csv
import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

from skinjax.data.constants import CLASS_NAMES, METADATA_COLUMNS

LAYOUTS = ('kaggle', 'flat', 'zip', 'nested_zip')
METADATA_NAME = 'HAM10000_metadata.csv'
FIRST_IMAGE_NUMBER = 24306  # As in the real download: ISIC_0024306 is the first image.


def make_fake_metadata(num_lesions: int = 20, images_per_lesion: int | tuple[int, int] = (1, 3),
                       seed: int = 0) -> list[dict[str, str]]:
  """Metadata rows as the CSV holds them (all values are strings, empty age when unknown)."""
  rng = np.random.default_rng(seed)
  low, high = (images_per_lesion, images_per_lesion) if isinstance(images_per_lesion, int) else images_per_lesion
  rows = []
  for lesion in range(num_lesions):
    dx = CLASS_NAMES[lesion % len(CLASS_NAMES)]
    age = '' if rng.random() < 0.15 else f'{5 * rng.integers(1, 18)}.0'
    sex = str(rng.choice(['male', 'female', 'unknown']))
    localization = str(rng.choice(['back', 'face', 'lower extremity', 'trunk', 'scalp']))
    for _ in range(rng.integers(low, high + 1)):
      rows.append({
          'lesion_id': f'HAM_{lesion:07d}',
          'image_id': f'ISIC_{FIRST_IMAGE_NUMBER + len(rows):07d}',
          'dx': dx,
          'dx_type': str(rng.choice(['histo', 'follow_up', 'consensus', 'confocal'])),
          'age': age,
          'sex': sex,
          'localization': localization,
      })
  # The real file is grouped by lesion but not sorted by image: shuffle so order is not a crutch.
  return [rows[i] for i in rng.permutation(len(rows))]


def metadata_csv(rows: list[dict[str, str]], columns=METADATA_COLUMNS) -> bytes:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction='ignore', lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue().encode()


def random_jpeg(size: tuple[int, int], rng: np.random.Generator) -> bytes:
  """A random colour with a little noise, so that images differ and JPEG has work to do."""
  width, height = size
  colour = rng.integers(0, 256, size=3)
  pixels = np.clip(colour + rng.normal(0, 20, size=(height, width, 3)), 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format='JPEG', quality=90)
  return out.getvalue()


def make_kaggle_folder(root, num_lesions: int = 20, images_per_lesion: int | tuple[int, int] = (1, 3),
                       image_size: tuple[int, int] = (40, 30), seed: int = 0, layout: str = 'kaggle',
                       num_large_images: int = 0, large_image_size: tuple[int, int] = (120, 90)) -> pathlib.Path:
  """Writes a fake download into `root` (created if needed) and returns `root`.

  Layouts: 'kaggle' (CSV + HAM10000_images_part_1/ + HAM10000_images_part_2/), 'flat'
  (CSV + images side by side), 'zip' (the Kaggle archive.zip, not extracted) and
  'nested_zip' (archive.zip holding the CSV and HAM10000_images_part_{1,2}.zip).
  The first `num_large_images` images (in CSV order) are `large_image_size`, the others `image_size`.
  """
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed + 1)
  rows = make_fake_metadata(num_lesions, images_per_lesion, seed)
  files = {METADATA_NAME: metadata_csv(rows)}  # relative path -> bytes
  half = (len(rows) + 1) // 2
  for i, row in enumerate(rows):
    size = large_image_size if i < num_large_images else image_size
    folder = {'flat': ''}.get(layout, f'HAM10000_images_part_{1 if i < half else 2}/')
    files[f'{folder}{row["image_id"]}.jpg'] = random_jpeg(size, rng)

  if layout in ('kaggle', 'flat'):
    for name, data in files.items():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_bytes(data)
  elif layout == 'zip':
    _write_zip(root / 'archive.zip', files)
  else:
    inner = {}
    for part in ('HAM10000_images_part_1', 'HAM10000_images_part_2'):
      members = {n.split('/', 1)[1]: d for n, d in files.items() if n.startswith(part + '/')}
      inner[f'{part}.zip'] = _zip_bytes(members)
    _write_zip(root / 'archive.zip', {METADATA_NAME: files[METADATA_NAME], **inner})
  return root


def _zip_bytes(files: dict[str, bytes]) -> bytes:
  out = io.BytesIO()
  with zipfile.ZipFile(out, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
    for name, data in files.items():
      archive.writestr(name, data)
  return out.getvalue()


def _write_zip(path: pathlib.Path, files: dict[str, bytes]) -> None:
  path.write_bytes(_zip_bytes(files))


def damage_first_image_in_zip(archive: pathlib.Path) -> str:
  """Flips bytes inside the first JPEG member's compressed data (its CRC then fails); returns its name."""
  with zipfile.ZipFile(archive) as opened:
    member = next(m for m in opened.infolist() if m.filename.endswith('.jpg'))
  data = bytearray(archive.read_bytes())
  local_header_size = 30 + len(member.filename) + len(member.extra)
  start = member.header_offset + local_header_size + 20
  data[start:start + 40] = bytes(b ^ 0xFF for b in data[start:start + 40])
  archive.write_bytes(bytes(data))
  return member.filename


def corrupt_image(path: pathlib.Path) -> None:
  """Cuts a JPEG short, as an interrupted download or copy leaves it."""
  path.write_bytes(path.read_bytes()[:200])

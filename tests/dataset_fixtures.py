"""Small downloads laid out as the real ones are, one per `prepare_dataset.py --format`, for tests.

Each writer keeps the real download's file names, columns and value spellings, with the odd but
legal cases users meet: empty metadata values, images without lesion_id, PNG files, columns the
reader does not know, `diagnosis` (older archive downloads) or `diagnosis_1..5`.
  isic_archive  isic-cli's `isic image download OUT`: OUT/<isic_id>.jpg, OUT/metadata.csv (isic_id,
                attribution, copyright_license, then the sorted union of the fields present),
                OUT/attribution.txt, OUT/licenses/<license>.txt
  isic2019      ISIC_2019_Training_Input/ (as unzipped: images plus ATTRIBUTION.txt, LICENSE.txt),
                ISIC_2019_Training_GroundTruth.csv (image,MEL,...,UNK as 1.0/0.0, UNK never 1),
                ISIC_2019_Training_Metadata.csv (image,age_approx,anatom_site_general,lesion_id,sex)
  isic2020      train/<image_name>.jpg and train.csv (image_name,patient_id,sex,age_approx,
                anatom_site_general_challenge,diagnosis,benign_malignant,target)
  csv           a clinic's own folder: mixed .jpg/.png files and labels.csv naming them
"""

from __future__ import annotations

import csv
import io
import pathlib

import numpy as np
from PIL import Image

ISIC2019_COLUMNS = ('MEL', 'NV', 'BCC', 'AK', 'BKL', 'DF', 'VASC', 'SCC', 'UNK')
# diagnosis_3 as the archive spells it, for each HAM10000-style class.
ARCHIVE_DIAGNOSIS_3 = {
    'akiec': 'Solar or actinic keratosis', 'bcc': 'Basal cell carcinoma',
    'bkl': 'Pigmented benign keratosis', 'df': 'Dermatofibroma', 'mel': 'Melanoma, NOS',
    'nv': 'Nevus', 'vasc': 'Hemangioma'}
ARCHIVE_DIAGNOSIS_1 = {'akiec': 'Malignant', 'bcc': 'Malignant', 'mel': 'Malignant'}
SITES = ('anterior torso', 'head/neck', 'lower extremity', 'posterior torso', 'upper extremity', '')


def image_bytes(rng: np.random.Generator, size=(40, 30), fmt: str = 'JPEG') -> bytes:
  pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255)
  out = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(out, format=fmt)
  return out.getvalue()


def _write_csv(path: pathlib.Path, header, rows) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, 'w', newline='', encoding='utf8') as f:
    writer = csv.DictWriter(f, header)  # missing values are written empty, as isic-cli's are
    writer.writeheader()
    writer.writerows(rows)


def _lesions(classes, lesions_per_class: int, rng, images_per_lesion=(1, 3)):
  """(class, lesion number, image number) triples: several images for some lesions."""
  triples, image = [], 0
  for lesion in range(lesions_per_class * len(classes)):
    for _ in range(rng.integers(images_per_lesion[0], images_per_lesion[1] + 1)):
      triples.append((classes[lesion % len(classes)], lesion, image))
      image += 1
  return [triples[i] for i in rng.permutation(len(triples))]


def write_isic_archive(root, *, classes=tuple(ARCHIVE_DIAGNOSIS_3), lesions_per_class: int = 4,
                       legacy_diagnosis: bool = False, seed: int = 0) -> pathlib.Path:
  """An isic-cli download whose diagnosis_3 (or, `legacy_diagnosis`, diagnosis) holds the class."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  rows = []
  for cls, lesion, image in _lesions(classes, lesions_per_class, rng):
    isic_id = f'ISIC_{9000000 + image:07d}'
    row = {'isic_id': isic_id, 'attribution': 'Anonymous', 'copyright_license': 'CC-BY',
           'age_approx': '' if image % 5 == 0 else str(5 * int(rng.integers(4, 17))),
           'anatom_site_general': SITES[image % len(SITES)],
           'image_type': 'dermoscopic', 'sex': ('male', 'female', '')[image % 3],
           # Some images were never matched to a lesion or a patient.
           'lesion_id': '' if image % 7 == 3 else f'IL_{4000000 + lesion:07d}',
           'patient_id': f'IP_{1000000 + lesion // 2:07d}'}
    if legacy_diagnosis:
      row['diagnosis'] = ARCHIVE_DIAGNOSIS_3.get(cls, cls).lower()
      row['benign_malignant'] = 'malignant' if cls in ARCHIVE_DIAGNOSIS_1 else 'benign'
    else:
      row['diagnosis_1'] = ARCHIVE_DIAGNOSIS_1.get(cls, 'Benign')
      row['diagnosis_2'] = 'Malignant melanocytic proliferations (Melanoma)' if cls == 'mel' else ''
      row['diagnosis_3'] = ARCHIVE_DIAGNOSIS_3.get(cls, cls)
    fmt, suffix = ('PNG', '.png') if image % 6 == 1 else ('JPEG', '.jpg')
    (root / f'{isic_id}{suffix}').parent.mkdir(parents=True, exist_ok=True)
    (root / f'{isic_id}{suffix}').write_bytes(image_bytes(rng, fmt=fmt))
    rows.append(row)
  fields = sorted({key for row in rows for key in row} - {'isic_id', 'attribution', 'copyright_license'})
  _write_csv(root / 'metadata.csv', ['isic_id', 'attribution', 'copyright_license', *fields], rows)
  (root / 'attribution.txt').write_text('Anonymous')
  (root / 'licenses').mkdir(exist_ok=True)
  (root / 'licenses' / 'CC-BY.txt').write_text('Creative Commons Attribution 4.0')
  return root


def write_isic2019(root, *, lesions_per_class: int = 4, seed: int = 0) -> pathlib.Path:
  """The 8 trained classes (UNK column present and never 1), BCN/MSK-style rows without lesion_id."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  images_dir = root / 'ISIC_2019_Training_Input'
  images_dir.mkdir(parents=True, exist_ok=True)
  (images_dir / 'ATTRIBUTION.txt').write_text('ISIC 2019: BCN_20000, HAM10000, MSK')
  (images_dir / 'LICENSE.txt').write_text('CC-BY-NC')
  truth, metadata = [], []
  for cls, lesion, image in sorted(_lesions(ISIC2019_COLUMNS[:8], lesions_per_class, rng),
                                   key=lambda t: t[2]):
    # Older HAM-era images were published downsampled, under that name.
    name = f'ISIC_{image:07d}' + ('_downsampled' if image % 11 == 5 else '')
    truth.append({'image': name, **{c: '1.0' if c == cls else '0.0' for c in ISIC2019_COLUMNS}})
    lesion_id = ('' if image % 4 == 2 else  # BCN_20000 and MSK images without a lesion
                 f'HAM_{lesion:07d}' if lesion % 2 else f'BCN_{lesion:07d}')
    metadata.append({'image': name, 'age_approx': '' if image % 9 == 0 else '55.0',
                     'anatom_site_general': SITES[image % len(SITES)], 'lesion_id': lesion_id,
                     'sex': ('male', 'female', '')[image % 3]})
    (images_dir / f'{name}.jpg').write_bytes(image_bytes(rng))
  _write_csv(root / 'ISIC_2019_Training_GroundTruth.csv', ['image', *ISIC2019_COLUMNS], truth)
  _write_csv(root / 'ISIC_2019_Training_Metadata.csv',
             ['image', 'age_approx', 'anatom_site_general', 'lesion_id', 'sex'], metadata)
  return root


def write_isic2020(root, *, patients: int = 16, seed: int = 0) -> pathlib.Path:
  """Melanoma (target 1) against benign, several images per patient, half the patients with one."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  (root / 'train').mkdir(parents=True, exist_ok=True)
  rows, image = [], 0
  for patient in range(patients):
    for k in range(int(rng.integers(2, 5))):
      melanoma = patient % 2 == 0 and k == 0
      name = f'ISIC_{2000000 + image:07d}'
      rows.append({'image_name': name, 'patient_id': f'IP_{7000000 + patient:07d}',
                   'sex': ('male', 'female', '')[patient % 3],
                   'age_approx': '' if image % 8 == 0 else '45.0',
                   'anatom_site_general_challenge': SITES[image % len(SITES)],
                   'diagnosis': 'melanoma' if melanoma else ('nevus', 'unknown')[image % 2],
                   'benign_malignant': 'malignant' if melanoma else 'benign',
                   'target': '1' if melanoma else '0'})
      (root / 'train' / f'{name}.jpg').write_bytes(image_bytes(rng))
      image += 1
  _write_csv(root / 'train.csv', list(rows[0]), rows)
  return root


def write_clinic_csv(root, *, classes=('benign', 'melanoma', 'other'), patients_per_class: int = 4,
                     seed: int = 0, group_column: str = 'patient') -> pathlib.Path:
  """A clinic's export: images/<file> (.jpg and .png) and labels.csv (file, diagnosis, patient, ...)."""
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  rows = []
  for cls, patient, image in _lesions(classes, patients_per_class, rng):
    fmt, suffix = ('PNG', '.png') if image % 3 == 0 else ('JPEG', '.jpeg')
    name = f'clinic_{image:04d}{suffix}'
    (root / 'images').mkdir(parents=True, exist_ok=True)
    (root / 'images' / name).write_bytes(image_bytes(rng, fmt=fmt))
    rows.append({'file': name, 'diagnosis': cls, group_column: f'P{patient:03d}',
                 'age': '' if image % 4 == 0 else str(30 + image % 40), 'notes': 'ok, checked'})
  _write_csv(root / 'labels.csv', ['file', 'diagnosis', group_column, 'age', 'notes'], rows)
  return root


def write_label_map(path, mapping: dict[str, str]) -> pathlib.Path:
  path = pathlib.Path(path)
  _write_csv(path, ['value', 'class'], [{'value': k, 'class': v} for k, v in mapping.items()])
  return path

"""The patient metadata a model can take beside the image (config.model.metadata): age, sex, site.

Each dataset names these columns its own way (HAM10000: age, sex, localization; ISIC 2019 and the
ISIC archive: age_approx, sex, anatom_site_general; ISIC 2020: anatom_site_general_challenge), and
HAM10000 describes sites in finer words than ISIC. They are read here into one vocabulary, ISIC's
general sites, so that a model trained on one dataset reads another's CSV.

Every field has an explicit "unknown", which is what an empty, unreadable or unseen value gives,
and what a CSV without the column gives:
  age   2 numbers: age / 100 (0 when unknown) and an unknown flag
  sex   one-hot over male, female, unknown
  site  one-hot over SITES, unknown
Metadata dropout (training only) sets whole fields to unknown at random, so that the model also
works on images that come without them, as the ISIC 2018 test set does.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

# Each field and the columns that hold it, in the order they are looked for.
COLUMNS = {
    'age': ('age', 'age_approx'),
    'sex': ('sex',),
    'site': ('site', 'anatom_site_general', 'anatom_site_general_challenge', 'localization'),
}
FIELDS = tuple(COLUMNS)
SEXES = ('male', 'female')
SITES = ('head/neck', 'upper extremity', 'lower extremity', 'anterior torso', 'posterior torso',
         'lateral torso', 'torso', 'palms/soles', 'oral/genital')
# HAM10000's localization words, and a few spellings of ISIC's, in ISIC's general sites.
_SITE_WORDS = {
    'face': 'head/neck', 'scalp': 'head/neck', 'ear': 'head/neck', 'neck': 'head/neck',
    'head': 'head/neck', 'back': 'posterior torso', 'chest': 'anterior torso',
    'abdomen': 'anterior torso', 'trunk': 'torso', 'hand': 'upper extremity',
    'foot': 'lower extremity', 'acral': 'palms/soles', 'genital': 'oral/genital',
}
_SEX_WORDS = {'m': 'male', 'f': 'female'}
AGE_SCALE = 100.0
_WIDTHS = {'age': 2, 'sex': len(SEXES) + 1, 'site': len(SITES) + 1}


class MetadataError(ValueError):
  """Metadata asked for that cannot be had; the message names the field, the columns and the fix."""


def column_key(column: str) -> str:
  """The key a column is stored under (`anatom_site_general`, `Age (years)` -> `age__years_`):
  the prepared records' metadata features and CSV headers are both matched through it."""
  return re.sub(r'[^0-9a-zA-Z_]', '_', column).lower() or '_'


def check_fields(fields: Sequence[str]):
  unknown = [field for field in fields if field not in COLUMNS]
  repeated = sorted({field for field in fields if list(fields).count(field) > 1})
  if unknown or repeated:
    what = f"names {', '.join(map(repr, unknown))}" if unknown else f"repeats {', '.join(repeated)}"
    raise MetadataError(f"config.model.metadata {what}: use some of {', '.join(FIELDS)}, each "
                        "once, or () for an image-only model.")


def column_of(field: str, columns: Sequence[str]) -> str | None:
  """The column among `columns` (raw names) that holds `field`, or None."""
  keys = {column_key(column): column for column in columns}
  return next((keys[name] for name in COLUMNS[field] if name in keys), None)


def missing_fields(fields: Sequence[str], columns: Sequence[str]) -> list[str]:
  return [field for field in fields if column_of(field, columns) is None]


def check_dataset(fields: Sequence[str], name: str, columns: Sequence[str]):
  """A field asked for that the training dataset has no column for is a mistake, not unknowns."""
  missing = missing_fields(fields, columns)
  if missing:
    looked_for = '; '.join(f"{field}: {', '.join(COLUMNS[field])}" for field in missing)
    raise MetadataError(
        f"config.model.metadata asks for {', '.join(missing)}, but {name} has no such column (it "
        f"has {', '.join(columns) or 'no metadata columns'}; looked for {looked_for}): remove "
        f"{'it' if len(missing) == 1 else 'them'} from config.model.metadata.")


def unknown_note(fields: Sequence[str], columns: Sequence[str], where: str) -> str | None:
  """The one line that says a model's metadata fields are missing from an input, or None."""
  missing = missing_fields(fields, columns)
  if not missing:
    return None
  return (f"note: {where} has no column for {', '.join(missing)} (looked for "
          f"{'; '.join(', '.join(COLUMNS[field]) for field in missing)}): the model takes "
          f"{'it' if len(missing) == 1 else 'them'} as unknown for every image.")


def summary(fields: Sequence[str], descriptions: Sequence, shares: Mapping[str, float],
            sampled: int) -> list[str]:
  """Lines for the start of a run: which column each dataset gives each field from, and how often
  each field is known in a sample of the training images; a warning for a field never known."""
  parts = []
  for description in descriptions:
    columns = [f'{field} <- {column_of(field, description.metadata_columns) or "unknown"}'
               for field in fields]
    parts.append(f"{description.name} ({', '.join(columns)})")
  lines = [f"Patient metadata: {'; '.join(parts)}; known in {sampled} sampled training images: "
           + ', '.join(f'{field} {share:.0%}' for field, share in shares.items()) + '.']
  lines += [f'warning: no sampled training image has a known {field}: the model cannot learn '
            'from it; check the column in the prepared dataset, or leave the field out of '
            'config.model.metadata.' for field, share in shares.items() if share == 0]
  return lines


def known_shares(encoder: MetadataEncoder, records: Sequence[Mapping]) -> dict[str, float]:
  """{field: share of `records` whose value is known}: a column that is there but empty in every
  record would otherwise train a branch on nothing, silently."""
  encoded = np.stack([encoder.encode(of_record(record)) for record in records])
  shares, start = {}, 0
  for field in encoder.fields:
    start += _WIDTHS[field]
    shares[field] = float(1.0 - encoded[:, start - 1].mean())  # each field's last entry: unknown
  return shares


@dataclasses.dataclass(frozen=True)
class MetadataEncoder:
  """Encodes one image's metadata ({column: value}) as config.model.metadata's fields say.

  Picklable, for grain's workers. Values may be str or bytes (TFDS text features).
  """
  fields: tuple[str, ...]

  @classmethod
  def from_config(cls, config) -> MetadataEncoder | None:
    """config.model.metadata's encoder; None for an image-only model."""
    fields = tuple(config.model.get('metadata', ()))
    return cls(fields) if fields else None

  @property
  def size(self) -> int:
    return encoded_size(self.fields)

  def encode(self, values: Mapping | None, rng: np.random.Generator | None = None,
             dropout: float = 0.0) -> np.ndarray:
    """The float32 vector; with `rng`, metadata dropout: every field unknown with probability
    `dropout` (an image that comes without metadata), else each field so independently (a CSV
    that lacks some columns)."""
    values = values or {}
    keys = {column_key(str(key)): key for key in values}  # only the values used are decoded
    dropped = np.zeros(len(self.fields), bool)
    if rng is not None and dropout > 0:
      dropped = np.full(len(self.fields), rng.random() < dropout) | (
          rng.random(len(self.fields)) < dropout)
    parts = []
    for field, drop in zip(self.fields, dropped):
      found = () if drop else (_text(values[keys[name]]) for name in COLUMNS[field] if name in keys)
      parts.append(_ENCODERS[field](next((value for value in found if value), None)))
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

  def unknown(self) -> np.ndarray:
    return self.encode(None)


def of_record(record: Mapping) -> Mapping:
  """The metadata columns of a source's record: its `metadata` features, or, in HAM10000 folders
  prepared by skinjax's earlier HAM10000 builder, the record itself, which holds age (a float,
  NaN when unknown), sex and localization beside the image."""
  return record['metadata'] if 'metadata' in record else record


def encoded_size(fields: Sequence[str]) -> int:
  return sum(_WIDTHS[field] for field in fields)


def _text(value) -> str:
  if isinstance(value, bytes):
    value = value.decode('utf-8', 'replace')
  elif isinstance(value, (float, np.floating)):
    value = f'{value:g}'  # the earlier HAM10000 builder's ages: 45.0, or NaN when unknown
  text = str(value).strip().lower()
  return '' if text in ('unknown', 'nan', 'na', 'n/a', 'none', 'null', '?') else text


def _one_hot(vocabulary: Sequence[str], value: str | None) -> np.ndarray:
  vector = np.zeros(len(vocabulary) + 1, np.float32)
  vector[vocabulary.index(value) if value in vocabulary else len(vocabulary)] = 1.0
  return vector


def _age(value: str | None) -> np.ndarray:
  try:
    age = float(value) if value is not None else float('nan')
  except ValueError:
    age = float('nan')
  if not 0 <= age <= 130:  # nan, a typo or a code for "unknown"
    return np.array([0.0, 1.0], np.float32)
  return np.array([age / AGE_SCALE, 0.0], np.float32)


def site_of(value: str | None) -> str | None:
  """A site in ISIC's general vocabulary (SITES), or None when unknown or unseen."""
  if value is None:
    return None
  value = re.sub(r'\s+', ' ', value.replace('_', ' '))
  value = _SITE_WORDS.get(value, value)
  return value if value in SITES else None


_ENCODERS = {
    'age': _age,
    'sex': lambda value: _one_hot(SEXES, _SEX_WORDS.get(value, value)),
    'site': lambda value: _one_hot(SITES, site_of(value)),
}

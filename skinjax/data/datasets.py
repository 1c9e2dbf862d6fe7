"""What a dataset is, as data: its classes, its melanoma class, how its images group, its challenge.

A prepared dataset records its `DatasetDescription` (TFDS DatasetInfo metadata), the trainer copies
it into W/config.json, and everything downstream -- the model head, splits, reports, the ISIC
submission file, external sets, predict and compare -- reads it from there. HAM10000 prepared
before descriptions were recorded, and runs trained on it, are described by `HAM10000`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence

# Grouping keys, best first: images of one lesion (or, failing that, one patient) must stay in
# one split, or the test split measures recognising what training already saw.
GROUP_KEYS = ('lesion_id', 'patient_id', 'image')


@dataclasses.dataclass(frozen=True)
class Challenge:
  """An ISIC challenge's submission CSV: an image column, then one column per challenge class.

  `class_of_column` maps each column to the dataset class whose probability it holds; a column
  mapped to None (ISIC 2019's UNK) is written as 0.0, since no class of ours predicts it.
  """
  name: str  # e.g. 'isic2018', for messages
  image_column: str
  columns: tuple[str, ...]
  class_of_column: Mapping[str, str | None]

  def to_json(self) -> dict:
    return {'name': self.name, 'image_column': self.image_column, 'columns': list(self.columns),
            'class_of_column': dict(self.class_of_column)}

  @classmethod
  def from_json(cls, value: Mapping) -> Challenge:
    return cls(value['name'], value['image_column'], tuple(value['columns']),
               dict(value['class_of_column']))


@dataclasses.dataclass(frozen=True)
class DatasetDescription:
  name: str  # the prepared dataset's name: config.data.dataset
  format: str  # the prepare format it came from (ham10000, isic2019, csv, ...)
  class_names: tuple[str, ...]  # label i is class_names[i]
  melanoma: str | None  # the class whose recall heads the report, if the dataset has one
  group_key: str  # one of GROUP_KEYS: what keeps images together in the splits
  metadata_columns: tuple[str, ...] = ()  # clinical fields kept in the prepared data
  challenge: Challenge | None = None  # the submission format of predictions_isic.csv

  def __post_init__(self):
    if self.melanoma is not None and self.melanoma not in self.class_names:
      raise ValueError(f'melanoma class {self.melanoma!r} is not one of {self.class_names}')
    if self.group_key not in GROUP_KEYS:
      raise ValueError(f'group_key {self.group_key!r} is not one of {GROUP_KEYS}')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def melanoma_index(self) -> int | None:
    return None if self.melanoma is None else self.class_names.index(self.melanoma)

  @property
  def is_binary_melanoma(self) -> bool:
    """Melanoma against the rest (ISIC 2020): reported by AUC and sensitivity at set specificity."""
    return self.num_classes == 2 and self.melanoma is not None

  @property
  def group_column(self) -> str | None:
    """The column that names each image's group in predictions.csv; None when images stand alone."""
    return None if self.group_key == 'image' else self.group_key

  def to_json(self) -> dict:
    return {'name': self.name, 'format': self.format, 'class_names': list(self.class_names),
            'melanoma': self.melanoma, 'group_key': self.group_key,
            'metadata_columns': list(self.metadata_columns),
            'challenge': None if self.challenge is None else self.challenge.to_json()}

  @classmethod
  def from_json(cls, value: Mapping | str) -> DatasetDescription:
    if isinstance(value, str):
      value = json.loads(value)
    challenge = value.get('challenge')
    return cls(value['name'], value['format'], tuple(value['class_names']), value.get('melanoma'),
               value['group_key'], tuple(value.get('metadata_columns', ())),
               None if challenge is None else Challenge.from_json(challenge))


def challenge_for(name: str, class_names: Sequence[str], columns: Sequence[str],
                  image_column: str = 'image') -> Challenge:
  """A challenge whose columns name our classes case-insensitively (MEL -> mel)."""
  by_lower = {c.lower(): c for c in class_names}
  return Challenge(name, image_column, tuple(columns),
                   {column: by_lower.get(column.lower()) for column in columns})


# ISIC 2018 Task 3: ground truth and submissions, in this column order.
ISIC2018_COLUMNS = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC')
# ISIC 2019 Task 1: UNK ("none of the others") is a submission column no training image has.
ISIC2019_COLUMNS = ('MEL', 'NV', 'BCC', 'AK', 'BKL', 'DF', 'VASC', 'SCC', 'UNK')

_HAM10000_CLASSES = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')

HAM10000 = DatasetDescription(
    name='ham10000', format='ham10000', class_names=_HAM10000_CLASSES, melanoma='mel',
    group_key='lesion_id', metadata_columns=('dx_type', 'age', 'sex', 'localization'),
    challenge=challenge_for('isic2018', _HAM10000_CLASSES, ISIC2018_COLUMNS))

# The built-in synthetic source imitates HAM10000's classes and lesion groups.
SYNTHETIC = dataclasses.replace(HAM10000, name='synthetic', format='synthetic',
                                metadata_columns=('age', 'sex', 'localization'))


# One diagnosis under two names: ISIC 2018's AKIEC (actinic keratosis and intraepithelial
# carcinoma) is ISIC 2019's AK.
SYNONYMS = {'akiec': ('ak',), 'ak': ('akiec',)}


def class_of(name: str, description: DatasetDescription) -> int | None:
  """The index of `description`'s class called `name` (a dx value, a ground-truth column or another
  dataset's class), or None: by name, the challenge's columns, then case and SYNONYMS aside."""
  names = description.class_names
  if name in names:
    return names.index(name)
  if description.challenge is not None:  # e.g. ISIC 2019's AK column is our 'ak'
    mapped = description.challenge.class_of_column.get(name)
    if mapped is not None:
      return names.index(mapped)
  lowered = {c.lower(): i for i, c in enumerate(names)}
  for candidate in (name.lower(), *SYNONYMS.get(name.lower(), ())):
    if candidate in lowered:
      return lowered[candidate]
  return None


def of_run(saved_config: Mapping) -> DatasetDescription:
  """The description a run recorded in W/config.json; runs from before descriptions were recorded
  trained on HAM10000 or on the synthetic source, which imitates it."""
  recorded = saved_config.get('dataset_description')
  if recorded:
    return DatasetDescription.from_json(recorded)
  return SYNTHETIC if saved_config.get('data', {}).get('source') == 'synthetic' else HAM10000

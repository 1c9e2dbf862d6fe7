"""Several prepared datasets in one run: config.data.dataset plus config.data.extra_train.

The main dataset (config.data.dataset) keeps its classes, its description and its splits, index for
index: its images come first in the combined source, so its train, val and test splits, and every
figure on its test split, are those of a run without extras. Each extra dataset's images join
training and, with config.data.extra_val_fraction, validation, split by their own lesion or patient
groups; none joins test.

Classes are mapped into the main dataset's: config.data.label_map ({extra class: main class}, ''
leaves the class out), else a class of the same name (case and ISIC's AK/AKIEC aside). An extra
class with neither is an error. An extra image whose id is also in the main dataset is left out:
it could be one of the main test images.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import numpy as np

from skinjax.data import datasets
from skinjax.data import patient_metadata
from skinjax.data import splits as splits_lib
from skinjax.data import storage

# The metadata every prepared dataset has, and so the union has.
METADATA_KEYS = ('image_id', 'group', 'dx', 'label')
DROPPED = ''  # a label_map value that leaves the class out


class SourcesError(ValueError):
  """Extra training data that cannot join the run; the message says what to change."""


def class_map(extra: datasets.DatasetDescription, main: datasets.DatasetDescription,
              label_map: Mapping[str, str]) -> dict[str, str | None]:
  """{extra class: main class, or None when left out}, for every class of `extra`."""
  label_map = {key.lower(): value for key, value in label_map.items()}
  mapping, unmapped = {}, []
  for name in extra.class_names:
    if name.lower() in label_map:
      target = label_map[name.lower()]
      if target != DROPPED and target not in main.class_names:
        raise SourcesError(
            f"config.data.label_map maps {extra.name}'s class {name!r} to {target!r}, which is not "
            f"a class of {main.name} ({', '.join(main.class_names)}); map it to one of them, or to "
            "'' to leave its images out.")
      mapping[name] = target or None
    else:
      index = datasets.class_of(name, main)
      if index is None:
        unmapped.append(name)
      else:
        mapping[name] = main.class_names[index]
  if unmapped:
    example = ', '.join(f"'{name}': '...'" for name in unmapped)
    raise SourcesError(
        f"{extra.name}'s class{'es' if len(unmapped) > 1 else ''} {', '.join(unmapped)} "
        f"{'have' if len(unmapped) > 1 else 'has'} no class in {main.name} "
        f"({', '.join(main.class_names)}): set config.data.label_map = {{{example}}}, each to "
        "one of those classes or to '' to leave its images out.")
  return mapping


def check_label_map(label_map: Mapping[str, str], extras: Sequence[datasets.DatasetDescription]):
  """A label_map key that no extra dataset has is a typo, not a mapping to ignore."""
  known = {name.lower() for extra in extras for name in extra.class_names}
  unknown = sorted(key for key in label_map if key.lower() not in known)
  if unknown:
    raise SourcesError(
        f"config.data.label_map names {', '.join(map(repr, unknown))}, which no dataset in "
        f"config.data.extra_train has (their classes: {', '.join(sorted(known))}).")


class CombinedSource:
  """Random access over the sources one after another, each record's label in the main classes.

  Picklable, like the sources it holds, for grain's worker processes.
  """

  def __init__(self, sources: Sequence, label_tables: Sequence[np.ndarray]):
    self.sources = list(sources)
    self.label_tables = [np.asarray(table, np.int64) for table in label_tables]
    self.offsets = np.cumsum([0] + [len(source) for source in self.sources])

  def __len__(self) -> int:
    return int(self.offsets[-1])

  def __getitem__(self, index) -> dict:
    index = int(index)
    which = int(np.searchsorted(self.offsets, index, side='right')) - 1
    record = self.sources[which][index - int(self.offsets[which])]
    # Each source's own metadata columns: the model's encoder reads any dataset's names.
    return {'image': record['image'], 'label': int(self.label_tables[which][int(record['label'])]),
            'metadata': patient_metadata.of_record(record)}


@dataclasses.dataclass(frozen=True)
class Extra:
  """One extra dataset as it joins the run."""
  dataset: object  # handle.PreparedDataset
  class_map: dict[str, str | None]
  label_table: np.ndarray  # its label -> the main dataset's label, -1 when left out
  in_main: np.ndarray  # bool per image: its id is also in the main dataset

  @property
  def kept(self) -> np.ndarray:
    return (self.label_table[self.dataset.metadata['label']] >= 0) & ~self.in_main


class CombinedDataset:
  """The main dataset and its extras, answering what `handle.PreparedDataset` answers.

  `description`, the classes and the test split are the main dataset's; `source`, `metadata`
  (plus a 'source' column: 0 for the main dataset, i for the i-th extra) and the train and val
  splits span all of them; `fingerprint` is the main dataset's with the extras' beside it.
  """

  def __init__(self, main, extras: Sequence, *, label_map: Mapping[str, str],
               extra_val_fraction: float = 0.0, source_weights: Sequence[float] = ()):
    self.main, self.extra_datasets = main, list(extras)
    self.label_map = dict(label_map)
    self.extra_val_fraction = extra_val_fraction
    self.source_weights = tuple(source_weights)
    self.name, self.split_seed = main.name, main.split_seed

  @property
  def description(self) -> datasets.DatasetDescription:
    return self.main.description

  @property
  def descriptions(self) -> list[datasets.DatasetDescription]:
    """The main dataset's description, then each extra's (their own classes and columns)."""
    return [self.description] + [extra.dataset.description for extra in self.extras]

  @functools.cached_property
  def extras(self) -> list[Extra]:
    names = [self.main.name] + [extra.name for extra in self.extra_datasets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
      raise SourcesError(f"config.data.extra_train names {', '.join(repeated)} twice, or as the "
                         'main dataset config.data.dataset: name each dataset once.')
    for extra in self.extra_datasets:
      if not storage.is_prepared(extra.data_dir, extra.name, extra.short_side):
        raise SourcesError(
            f'config.data.extra_train names {extra.name!r}, which is not prepared in '
            f'{extra.data_dir} with short side {extra.short_side}: prepare it with '
            f'scripts/prepare_dataset.py --name={extra.name} --data_dir={extra.data_dir} '
            f'--image_size={extra.short_side} (and its --format and --manual_dir), or remove it.')
    check_label_map(self.label_map, [extra.description for extra in self.extra_datasets])
    main_ids = set(self.main.metadata['image_id'].tolist())
    made = []
    for extra in self.extra_datasets:
      mapping = class_map(extra.description, self.description, self.label_map)
      table = np.array([-1 if mapping[c] is None else self.description.class_names.index(mapping[c])
                        for c in extra.description.class_names], np.int64)
      in_main = np.isin(extra.metadata['image_id'], list(main_ids))
      made.append(Extra(extra, mapping, table, in_main))
    return made

  @functools.cached_property
  def fingerprint(self) -> dict:
    return {**self.main.fingerprint, 'extra_train': [
        {**extra.dataset.fingerprint, 'class_map': extra.class_map} for extra in self.extras]}

  @property
  def num_examples(self) -> int:
    return self.main.num_examples + sum(extra.dataset.num_examples for extra in self.extras)

  @functools.cached_property
  def source(self) -> CombinedSource:
    tables = [np.arange(self.description.num_classes)] + [e.label_table for e in self.extras]
    return CombinedSource([self.main.source] + [e.dataset.source for e in self.extras], tables)

  @functools.cached_property
  def metadata(self) -> dict[str, np.ndarray]:
    parts = [{**{key: self.main.metadata[key] for key in METADATA_KEYS},
              'source': np.zeros(self.main.num_examples, np.int64)}]
    names = np.array([''] + list(self.description.class_names))
    for number, extra in enumerate(self.extras, start=1):
      own = extra.dataset.metadata
      labels = extra.label_table[own['label']]
      parts.append({'image_id': own['image_id'],
                    # Prefixed: two datasets may use the same lesion id for different lesions.
                    'group': np.char.add(f'{extra.dataset.name}:', own['group'].astype(str)),
                    'dx': names[labels + 1], 'label': labels,
                    'source': np.full(len(labels), number, np.int64)})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

  @functools.cached_property
  def splits(self) -> dict[str, np.ndarray]:
    splits = {name: [indices] for name, indices in self.main.splits.items()}
    offset = self.main.num_examples
    for extra in self.extras:
      kept = np.flatnonzero(extra.kept)
      own = extra.dataset.metadata
      extra_splits = splits_lib.train_val_split(
          extra.label_table[own['label'][kept]], own['group'][kept], self.extra_val_fraction,
          seed=self.split_seed)
      for name, positions in extra_splits.items():
        splits[name].append(offset + kept[positions])
      offset += extra.dataset.num_examples
    return {name: np.concatenate(parts) for name, parts in splits.items()}

  def source_weights_of(self, indices: np.ndarray) -> np.ndarray | None:
    """How often each of `indices` is drawn relative to the others, by its source's weight in
    config.data.source_weights; None when every source weighs the same."""
    if len(set(self.source_weights)) <= 1:
      return None
    return np.asarray(self.source_weights, np.float64)[self.metadata['source'][indices]]

  def sources_summary(self) -> list[str]:
    """What each extra dataset adds, one line each, for the start of a run."""
    in_train, in_val = (np.bincount(self.metadata['source'][self.splits[split]],
                                    minlength=len(self.extras) + 1) for split in ('train', 'val'))
    lines = []
    for number, extra in enumerate(self.extras, start=1):
      counts = np.bincount(extra.dataset.metadata['label'],
                           minlength=extra.dataset.description.num_classes)
      classes = ', '.join(f'{name}->{target} {count}' if target else f'{name} left out {count}'
                          for (name, target), count in zip(extra.class_map.items(), counts))
      shared = int(extra.in_main.sum())
      lines.append(
          f'Extra training data {extra.dataset.name}, {extra.dataset.num_examples} images '
          f'({classes}){f", {shared} also in {self.name} left out" if shared else ""}: '
          f'{in_train[number]} to train, {in_val[number]} to validation.')
    return lines

"""Train/val/test splits of HAM10000, grouped by lesion so that no lesion leaks across splits.

HAM10000 holds several images of many lesions (1,956 lesions have 2-9 images). A per-image
split, as in the study we reproduce, puts images of one lesion on both sides, so test
accuracy partly measures recognising a lesion already seen in training. The default split
keeps each lesion's images together and still gives each split the overall class mix.
"""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

SPLIT_NAMES = ('train', 'val', 'test')
METHODS = ('lesion_grouped', 'random_image')


def make_splits(labels, groups, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0,
                method: str = 'lesion_grouped') -> dict[str, np.ndarray]:
  """Returns {'train', 'val', 'test'} -> sorted indices into labels; disjoint and covering all.

  'lesion_grouped': images of one group (lesion) always land in the same split, and each
  split's class mix is close to the overall one (see `_grouped_split`).
  'random_image': the study's per-image split, stratified by class; groups are ignored.
  """
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  if labels.ndim != 1 or labels.shape != groups.shape or len(labels) == 0:
    raise ValueError(f'labels and groups must be non-empty 1-D arrays of the same length, got '
                     f'shapes {labels.shape} and {groups.shape}')
  fractions = _check_fractions(fractions)
  if method == 'lesion_grouped':
    assignment = _grouped_split(labels, groups, fractions, seed)
    return {name: np.flatnonzero(assignment == i) for i, name in enumerate(SPLIT_NAMES)}
  if method == 'random_image':
    return _random_image_split(labels, fractions, seed)
  raise ValueError(f'Unknown split method {method!r}; valid methods are {list(METHODS)}')


def train_val_split(labels, groups, val_fraction: float, seed: int = 0) -> dict[str, np.ndarray]:
  """{'train', 'val'} -> sorted indices, grouped as `make_splits` groups, with no test split: how an
  extra training dataset joins a run. val_fraction 0 puts every image in train."""
  labels, groups = np.asarray(labels), np.asarray(groups)
  if not 0 <= val_fraction < 1:
    raise ValueError(f'val_fraction must be in [0, 1), got {val_fraction}')
  if val_fraction == 0 or len(labels) == 0:
    return {'train': np.arange(len(labels)), 'val': np.arange(0)}
  # A test share of 0: the dealing gives each group to the split that misses the most images, and
  # while images remain, train or val misses more than the test split's 0.
  assignment = _grouped_split(labels, groups, np.array([1 - val_fraction, val_fraction, 0.0]), seed)
  assert not np.any(assignment == 2)
  return {'train': np.flatnonzero(assignment == 0), 'val': np.flatnonzero(assignment == 1)}


def fold_splits(splits: Mapping[str, np.ndarray], labels, groups, folds: int, fold: int,
                seed: int = 0, class_names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Fold `fold` of `folds`: `splits`' test split kept, its train and val images dealt into
  `folds` equal parts grouped as `make_splits` groups (no group in two parts, each part's class
  mix close to the whole's); part `fold` is val, the others train. Raises FoldError when a class
  has fewer groups in train and val than there are folds: some fold's val would lack it."""
  labels, groups = np.asarray(labels), np.asarray(groups)
  check_fold(folds, fold)
  pool = np.sort(np.concatenate([splits['train'], splits['val']]))
  _, _, group_label, label_codes = _groups(labels[pool], groups[pool])
  groups_per_class = np.bincount(group_label, minlength=len(label_codes))
  short = [(c, n) for c, n in zip(label_codes, groups_per_class) if n < folds]
  if short:
    named = ', '.join(f'{class_names[c] if class_names else c} ({n})' for c, n in short)
    raise FoldError(
        f'config.data.folds={folds}: these classes have fewer lesions in train and val than '
        f'folds: {named}, so some fold would validate without them; use fewer folds.')
  part = _grouped_split(labels[pool], groups[pool], np.full(folds, 1.0 / folds), seed)
  result = {'train': pool[part != fold], 'val': pool[part == fold],
            'test': np.asarray(splits['test'])}
  # Checked, not only dealt so: a lesion on both sides of a fold would flatter its validation.
  if leak_report({'train': result['train'], 'val': result['val']}, groups)['shared_lesions_total']:
    raise FoldError(f'Fold {fold} of {folds} shares lesions between train and val; this is a bug '
                    'in the fold dealer: please report it with the dataset.')
  return result


class FoldError(ValueError):
  """config.data.folds and config.data.fold that cannot make a fold; the message says which."""


def check_fold(folds: int, fold: int) -> None:
  """Raises FoldError unless fold `fold` of `folds` can exist (K-fold needs 2 folds or more)."""
  if folds < 2:
    raise FoldError(f'config.data.folds={folds}: use 2 or more folds, or 0 for one '
                    'train/val split.')
  if not 0 <= fold < folds:
    raise FoldError(f'config.data.fold={fold} is not a fold of {folds}: use 0 to {folds - 1}.')


def _check_fractions(fractions) -> np.ndarray:
  values = np.asarray(fractions, dtype=np.float64)
  if values.shape != (len(SPLIT_NAMES),) or not np.all(np.isfinite(values)) or np.any(values <= 0) \
      or not math.isclose(values.sum(), 1.0, abs_tol=1e-6):
    raise ValueError(f'fractions must be {len(SPLIT_NAMES)} positive numbers summing to 1 '
                     f'(for {", ".join(SPLIT_NAMES)}), got {tuple(fractions)}')
  return values


def _groups(labels: np.ndarray, groups: np.ndarray):
  """How the dealer sees the images: (each image's group index, each group's size, each group's
  majority label as an index into label_codes (ties: the lower label), label_codes, the sorted
  labels present)."""
  group_names, group_of_image = np.unique(groups, return_inverse=True)
  label_codes, label_of_image = np.unique(labels, return_inverse=True)
  counts = np.zeros((len(group_names), len(label_codes)), dtype=np.int64)
  np.add.at(counts, (group_of_image, label_of_image), 1)
  return group_of_image, counts.sum(axis=1), counts.argmax(axis=1), label_codes


def _grouped_split(labels: np.ndarray, groups: np.ndarray, fractions: np.ndarray, seed: int) -> np.ndarray:
  """Split index per image: 0, 1, ... for fractions[0], fractions[1], ...

  Each group gets the majority label of its images (ties: the lower label). Class by
  class, its groups are dealt out largest first -- like packing bins, the small groups
  at the end fill the gaps the big ones left -- each to the split that misses the most
  images of that class (target minus assigned). Ties go to the split that misses the
  most images overall, so that rounding errors of different classes do not pile up in
  one split. Each split then misses at most one group's worth of images per class.
  Equal-sized groups are dealt in an order shuffled with `seed`.
  """
  group_of_image, group_size, group_label, label_codes = _groups(labels, groups)
  num_groups = len(group_size)

  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(num_groups)
  deal_order = shuffled[np.argsort(-group_size[shuffled], kind='stable')]

  split_of_group = np.empty(num_groups, dtype=np.int64)
  overall_missing = fractions * len(labels)
  for label in range(len(label_codes)):
    class_groups = deal_order[group_label[deal_order] == label]
    class_missing = fractions * group_size[class_groups].sum()
    for group in class_groups:
      # Rounded so that splits with equal fractions tie exactly, and the tie-break applies.
      split = max(range(len(fractions)),
                  key=lambda s: (round(class_missing[s], 9), round(overall_missing[s], 9)))
      split_of_group[group] = split
      class_missing[split] -= group_size[group]
      overall_missing[split] -= group_size[group]
  return split_of_group[group_of_image]


def _random_image_split(labels: np.ndarray, fractions: np.ndarray, seed: int) -> dict[str, np.ndarray]:
  # Imported here: sklearn takes a second to import, and only the study's split needs it.
  from sklearn.model_selection import train_test_split
  indices = np.arange(len(labels))
  rest, test = train_test_split(indices, test_size=fractions[2], stratify=labels, random_state=seed)
  val_share_of_rest = fractions[1] / (fractions[0] + fractions[1])
  train, val = train_test_split(rest, test_size=val_share_of_rest, stratify=labels[rest], random_state=seed)
  return {'train': np.sort(train), 'val': np.sort(val), 'test': np.sort(test)}


def leak_report(splits: Mapping[str, np.ndarray], groups) -> dict:
  """How many lesions appear in more than one split, and how much of test was seen in training.

  Returns {'shared_lesions': {'train-val': n, 'train-test': n, 'val-test': n},
           'shared_lesions_total': n (distinct lesions in two or more splits),
           'test_images_with_lesion_in_train': fraction of test images}.
  """
  groups = np.asarray(groups)
  lesions = {name: set(groups[indices].tolist()) for name, indices in splits.items()}
  shared = {f'{a}-{b}': len(lesions[a] & lesions[b]) for a, b in itertools.combinations(splits, 2)}
  in_several = set().union(*(lesions[a] & lesions[b] for a, b in itertools.combinations(splits, 2)))
  report = {'shared_lesions': shared, 'shared_lesions_total': len(in_several)}
  if 'train' in splits and 'test' in splits and len(splits['test']):
    test_groups = groups[splits['test']]
    report['test_images_with_lesion_in_train'] = float(np.isin(test_groups, list(lesions['train'])).mean())
  return report


def write_splits_csv(path, metadata: Mapping[str, np.ndarray], splits: Mapping[str, np.ndarray],
                     group_column: str = 'lesion_id') -> None:
  """One row per image in metadata order: image_id, <group_column>, dx, split.

  The group comes from metadata[group_column], else metadata['group'] (any prepared dataset).
  """
  num_images = len(metadata['image_id'])
  split_of_image = np.full(num_images, '', dtype=object)
  for name, indices in splits.items():
    if np.any(split_of_image[indices] != ''):
      raise ValueError(f'Split {name!r} shares images with another split; splits must be disjoint')
    split_of_image[indices] = name
  if np.any(split_of_image == ''):
    raise ValueError(f'{np.sum(split_of_image == "")} images are in no split; splits must cover all images')
  path = os.fspath(path)
  temporary = path + '.incomplete'  # Readers see the old file or the whole new one.
  with open(temporary, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(['image_id', group_column, 'dx', 'split'])
    groups = metadata[group_column] if group_column in metadata else metadata['group']
    writer.writerows(zip(metadata['image_id'], groups, metadata['dx'], split_of_image))
  os.replace(temporary, path)


def check_every_class_present(splits: Mapping[str, np.ndarray], labels, num_classes: int,
                              class_names: Sequence[str] | None = None) -> None:
  """Raises ValueError when a split lacks a class: per-class metrics would be undefined."""
  labels = np.asarray(labels)
  problems = []
  for name, indices in splits.items():
    missing = sorted(set(range(num_classes)) - set(labels[indices].tolist()))
    if missing:
      shown = [f'{c} ({class_names[c]})' if class_names else str(c) for c in missing]
      problems.append(f'split {name!r} ({len(indices)} images) has no images of class {", ".join(shown)}')
  if problems:
    raise ValueError('; '.join(problems) + '. The dataset is too small for these split fractions: '
                     'use more images, or larger fractions (config.data.split_fractions) for the splits that lack '
                     'classes.')

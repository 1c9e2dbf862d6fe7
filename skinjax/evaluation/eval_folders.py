"""evaluate.py's result folders: how they are named, which set each holds, and who may write one.

A run's results go to W/eval/<split>-<checkpoint>[-tta_<mode>]/. The split of an external set is
external-<set name>-<set hash>:
  set name  the folder the set came from: the labels file's folder when the images lie in it
            (derm7pt_dev/images + derm7pt_dev/labels.csv -> derm7pt_dev,
            isic2018_test_dev/images + isic2018_test_dev/ISIC2018_Task3_Test_GroundTruth.csv ->
            isic2018_test_dev, ham10000/ + ham10000/HAM10000_metadata.csv -> ham10000), else the
            images folder's own name.
  set hash  8 hex digits of a SHA-256 over the set's sorted image ids with their class names (and
            lesion or patient ids and ISIC score weights when the labels give them): two sets
            whose labels files share a name, or one folder labelled two ways, never share a folder.
Both are recorded in metrics.json (set_name, set_hash). Folders written before, named
external-<labels CSV name>-<checkpoint>, are still read: their set is named after the images_dir
and labels_csv their metrics.json records.
"""

import hashlib
import json
import os
import pathlib
import re

import numpy as np

EXTERNAL_PREFIX = 'external-'


def suffix(checkpoint: str, tta: str) -> str:
  """-<checkpoint>[-tta_<mode>]: a TTA result never overwrites the plain one."""
  return f'-{checkpoint}' + ('' if tta == 'none' else f'-tta_{tta}')


def external_set_name(images_dir, labels_csv) -> str:
  """The folder the set came from (see the module docstring), usable in a folder name."""
  # abspath, not resolve: the folder as the user named it, even through a symlink.
  images = pathlib.Path(os.path.abspath(pathlib.Path(images_dir).expanduser()))
  labels_folder = pathlib.Path(os.path.abspath(pathlib.Path(labels_csv).expanduser())).parent
  # A set's images often sit in a generic subfolder (images/, ISIC_2019_Training_Input/) of the
  # folder that names the set and holds its labels.
  inside = images == labels_folder or labels_folder in images.parents
  name = (labels_folder if inside else images).name
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name) or 'set'


def set_hash(image_ids, class_names, groups=None, score_weights=None) -> str:
  """8 hex digits naming the set's content, in any row order (see the module docstring)."""
  columns = [np.asarray(image_ids).astype(str), np.asarray(class_names).astype(str)]
  columns += [np.asarray(c).astype(str) for c in (groups, score_weights) if c is not None]
  rows = sorted(zip(*(c.tolist() for c in columns)))
  # Which optional columns are present is part of the content: no groups differs from no weights.
  content = {'groups': groups is not None, 'score_weights': score_weights is not None,
             'rows': rows}
  return hashlib.sha256(json.dumps(content).encode()).hexdigest()[:8]


def external_split(set_name: str, digest: str) -> str:
  return f'{EXTERNAL_PREFIX}{set_name}-{digest}'


def describe(recorded: dict) -> str:
  """What a metrics.json (or an evaluation's description) was computed on, for messages."""
  if recorded.get('split') == 'external':
    if 'set_hash' in recorded:
      return f"the external set {recorded['set_name']} (set hash {recorded['set_hash']})"
    return f"the external set labelled by {recorded.get('labels_csv', 'an unrecorded CSV')}"
  return f"the {recorded.get('split')} split of {recorded.get('dataset', 'its dataset')}"


def same_set(recorded: dict, description: dict) -> bool:
  """Whether an evaluation's metrics.json was computed on the set `description` describes."""
  if recorded.get('split') != description['split']:
    return False
  if description['split'] != 'external':
    return recorded.get('dataset', description.get('dataset')) == description.get('dataset')
  if 'set_hash' in recorded:
    return recorded['set_hash'] == description['set_hash']
  # Written before sets were hashed: the same files are the best evidence there is.
  return all(recorded.get(key) == description.get(key) for key in ('images_dir', 'labels_csv'))


def check_out_dir(out_dir: pathlib.Path, description: dict):
  """Refuses a folder holding the results of another set (or the trainer's report), so that
  writing into it cannot replace them; the same set may overwrite its own results."""
  metrics_path = pathlib.Path(out_dir) / 'metrics.json'
  if not metrics_path.is_file():
    return
  try:
    recorded = json.loads(metrics_path.read_text())
  except ValueError:
    recorded = {}
  if 'checkpoint' not in recorded:  # evaluate.py records it; the trainer's report does not
    raise ValueError(f'--out {out_dir} already holds a report that evaluate.py did not write; '
                     'pass another --out.')
  if not same_set(recorded, description):
    raise ValueError(f'--out {out_dir} already holds the results of {describe(recorded)}, not '
                     f'of {describe(description)}; pass another --out (or delete that folder to '
                     'replace them).')


def external_set_of(folder: pathlib.Path, metrics: dict,
                    folder_suffix: str) -> tuple[str, str, str]:
  """(key, name, detail) of the external set an evaluation folder holds: the key tells sets
  apart, the name is the folder the set came from, the detail tells sets of one name apart."""
  if 'set_hash' in metrics:
    return (external_split(metrics['set_name'], metrics['set_hash']), metrics['set_name'],
            f"set hash {metrics['set_hash']}")
  # An older folder, external-<labels CSV name><suffix>: the set is told apart by that name.
  stem = folder.name.removeprefix(EXTERNAL_PREFIX).removesuffix(folder_suffix)
  if 'images_dir' in metrics and 'labels_csv' in metrics:
    name = external_set_name(metrics['images_dir'], metrics['labels_csv'])
  else:
    name = stem
  return f'{EXTERNAL_PREFIX}{name}-labels_{stem}', name, f'labels {stem}.csv'

"""Several trained runs scored as one model: the mean of their softmax.

The members may differ in architecture, image size, preprocessing or fold: each predicts through
its own evaluation pipeline (inference.predict_source), and only the probabilities are averaged.
They must predict the same classes of the same dataset; on one of its splits they must also have
that split in common (the folds of scripts/cross_validate.py share their test split, not their
validation splits).
"""

import dataclasses
import os
import pathlib

import numpy as np

from skinjax.evaluation import inference


class EnsembleError(ValueError):
  """Members that cannot be averaged; the message names them."""


@dataclasses.dataclass
class EnsembleRun:
  """What checkpoint_eval needs of a run (config, description, predict, names), for the mean of
  `members`. The first member's config opens the dataset and names the recipe."""
  members: list[inference.LoadedRun]

  def __post_init__(self):
    first = self.members[0]
    for member in self.members[1:]:
      if member.description.class_names != first.description.class_names:
        raise EnsembleError(
            f'{member.workdir} predicts {", ".join(member.description.class_names)}, but '
            f'{first.workdir} predicts {", ".join(first.description.class_names)}: an ensemble '
            'averages runs with the same classes; leave one out.')
      if member.description.name != first.description.name:
        raise EnsembleError(
            f'{member.workdir} was trained on {member.description.name}, but {first.workdir} on '
            f'{first.description.name}: an ensemble averages runs trained on the same dataset; '
            'leave one out.')

  @property
  def config(self):
    return self.members[0].config

  @property
  def description(self):
    return self.members[0].description

  @property
  def workdir(self) -> pathlib.Path:
    return default_workdir([member.workdir for member in self.members])

  @property
  def checkpoint(self) -> str:
    checkpoints = {member.checkpoint for member in self.members}
    return checkpoints.pop() if len(checkpoints) == 1 else 'mixed'

  @property
  def step(self) -> int:
    return max(member.step for member in self.members)

  @property
  def num_params(self) -> int:
    return sum(member.num_params for member in self.members)

  def report_fields(self) -> dict:
    """What metrics.json says of the model: every member, and the ensemble as a whole."""
    archs = sorted({member.config.model.arch for member in self.members})
    return {'arch': '+'.join(archs), 'init': self.config.model.init,
            'image_size': self.config.data.image_size,
            'members': [{'workdir': str(m.workdir), 'checkpoint': m.checkpoint, 'step': m.step,
                         'arch': m.config.model.arch, 'image_size': m.config.data.image_size}
                        for m in self.members]}

  def predict(self, source, indices, *, tta_mode: str = 'none',
              batch_size: int | None = None) -> np.ndarray:
    """The members' softmax probabilities, averaged with equal weights."""
    probs = [member.predict(source, indices, tta_mode=tta_mode, batch_size=batch_size)
             for member in self.members]
    return np.mean(probs, axis=0)


def default_workdir(workdirs) -> pathlib.Path:
  """Where an ensemble's evaluations go by default: beside its members, in a folder named after
  them (ensemble-<member>+<member>...), so that two ensembles never share one."""
  workdirs = [pathlib.Path(w).absolute() for w in workdirs]
  parent = pathlib.Path(os.path.commonpath([w.parent for w in workdirs]))
  return parent / ('ensemble-' + '+'.join(w.name for w in workdirs))


def load(workdirs, checkpoint: str = 'best') -> EnsembleRun:
  """The runs in `workdirs` (two or more, each checked as inference.load_run checks one)."""
  if any(not str(w).strip() for w in workdirs):
    raise EnsembleError(f'--workdir={",".join(map(str, workdirs))} has an empty name; separate '
                        'the runs with single commas.')
  workdirs = [pathlib.Path(str(w).strip()).expanduser() for w in workdirs]
  if len(workdirs) < 2:
    raise EnsembleError('An ensemble needs two or more --workdir runs, separated by commas.')
  repeated = sorted({str(w) for w in workdirs if workdirs.count(w) > 1})
  if repeated:
    raise EnsembleError(f'--workdir names {", ".join(repeated)} more than once; name each member '
                        'once.')
  return EnsembleRun([inference.load_run(w, checkpoint) for w in workdirs])


def check_same_split(split: str, member_splits: list) -> None:
  """Members scored on one of their dataset's splits must share its images."""
  first = member_splits[0]
  for workdir, image_ids in member_splits[1:]:
    if np.array_equal(image_ids, first[1]):
      continue
    if split == 'test':
      raise EnsembleError(
          f'{workdir} and {first[0]} have different test splits (another dataset, split method, '
          'seed or fractions): an ensemble is scored on one test set; leave one out, or score '
          'them on an external set.')
    raise EnsembleError(
        f'{workdir} and {first[0]} have different {split} splits (other folds or split '
        'settings): an ensemble is scored on images no member trained on; use --split=test, or '
        'an external set.')

"""Evaluates a run's checkpoint on one of its splits or on an external labelled set.

The report is the trainer's own (`report.write_report`), so W/eval/test-best/ and W/report/
hold the same numbers for the same checkpoint; the evaluation adds what is too slow or too
specific for every training run to need: test-time augmentation and external data.
"""

import dataclasses
import pathlib

import numpy as np

from skinjax.data import handle
from skinjax.evaluation import external
from skinjax.evaluation import inference
from skinjax.evaluation import report

SPLITS = ('test', 'val', 'train')


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What to evaluate on: a source, the indices into it, and what is known about each example."""
  name: str  # the split name or 'external-<csv name>'; names the output folder
  source: object
  indices: np.ndarray
  labels: np.ndarray
  image_ids: np.ndarray
  groups: np.ndarray | None  # lesion_id or patient_id: the bootstrap resamples them
  description: dict  # recorded in metrics.json
  # For ISIC ground truths: the official scorer's row weights; rows of weight 0 are left out of
  # the metrics (but keep their predictions) and named in the report.
  score_weights: np.ndarray | None = None


def run_split(run: inference.LoadedRun, split: str, data_dir: str | None = None) -> EvalData:
  """`split` of the run's own dataset, split exactly as the trainer split it."""
  if split not in SPLITS:
    raise inference.RunInputError(f'--split={split!r} is not one of {", ".join(SPLITS)}.')
  config = run.config
  if data_dir:
    config = config.copy_and_resolve_references()
    config.data.data_dir = data_dir
  dataset = handle.PreparedDataset.open(config)
  description = dataset.description
  if description.class_names != run.description.class_names:
    raise inference.RunInputError(
        f'The dataset in {config.data.data_dir} has the classes {", ".join(description.class_names)}'
        f', but the run was trained on {", ".join(run.description.class_names)}; pass the '
        '--data_dir the run trained on.')
  metadata, indices = dataset.metadata, dataset.splits[split]
  return EvalData(split, dataset.source, indices, metadata['label'][indices],
                  metadata['image_id'][indices], metadata['group'][indices],
                  {'split': split, 'source': config.data.source, 'dataset': description.name,
                   'data_dir': config.data.data_dir})


def external_set(images_dir, labels_csv, run: inference.LoadedRun) -> EvalData:
  """A labelled folder of images, scored in the classes the run was trained on."""
  labelled = external.read_labels(labels_csv, run.description)
  paths = external.find_images(images_dir, labelled.image_ids)
  return EvalData(f'external-{pathlib.Path(labels_csv).stem}',
                  external.ImageFiles(paths, labelled.labels), np.arange(len(paths)),
                  labelled.labels, labelled.image_ids, labelled.groups,
                  {'split': 'external', 'images_dir': str(images_dir),
                   'labels_csv': str(labels_csv), 'labels_format': labelled.csv_format},
                  labelled.score_weights)


def default_out_dir(run: inference.LoadedRun, data: EvalData, tta_mode: str) -> pathlib.Path:
  """W/eval/<split>-<checkpoint>[-tta_<mode>]: a TTA result never overwrites the plain one."""
  suffix = '' if tta_mode == 'none' else f'-tta_{tta_mode}'
  return run.workdir / 'eval' / f'{data.name}-{run.checkpoint}{suffix}'


def evaluate_checkpoint(run: inference.LoadedRun, data: EvalData, out_dir: pathlib.Path, *,
                        tta_mode: str = 'none', bootstrap_seed: int = 0) -> dict:
  """Predicts `data` with the run's model and writes the full report into `out_dir`."""
  probs = inference.predict_source(run, data.source, data.indices, tta_mode=tta_mode)
  config = run.config
  extra = {'workdir': str(run.workdir), 'arch': config.model.arch, 'init': config.model.init,
           'num_params': run.num_params, 'image_size': config.data.image_size,
           'checkpoint': run.checkpoint, 'step': run.step, 'tta': tta_mode, **data.description}
  return report.write_report(pathlib.Path(out_dir), data.labels, probs, data.image_ids,
                             run.description, extra=extra, groups=data.groups,
                             bootstrap_seed=bootstrap_seed,
                             score_weights=data.score_weights)

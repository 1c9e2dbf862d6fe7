"""Evaluates a run's checkpoint on one of its splits or on an external labelled set.

The report is the trainer's own (`report.write_report`), so W/eval/test-best/ and W/report/
hold the same numbers for the same checkpoint; the evaluation adds what is too slow or too
specific for every training run to need: test-time augmentation and external data. Where the
results go, and which folders they may not overwrite, is eval_folders'.
"""

import dataclasses
import pathlib

import numpy as np

from skinjax.data import handle
from skinjax.data import patient_metadata
from skinjax.evaluation import ensemble
from skinjax.evaluation import eval_folders
from skinjax.evaluation import external
from skinjax.evaluation import inference
from skinjax.evaluation import report

SPLITS = ('test', 'val', 'train')


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What to evaluate on: a source, the indices into it, and what is known about each example."""
  # The split, or external-<set name>-<set hash> (eval_folders); names the output folder.
  name: str
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
  """`split` of the run's own dataset, split exactly as the trainer split it; of an ensemble's
  members, the split they all share."""
  if split not in SPLITS:
    raise inference.RunInputError(f'--split={split!r} is not one of {", ".join(SPLITS)}.')
  if isinstance(run, ensemble.EnsembleRun):
    member_data = [run_split(member, split, data_dir) for member in run.members]
    ensemble.check_same_split(split, [(member.workdir, data.image_ids)
                                      for member, data in zip(run.members, member_data)])
    return member_data[0]
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
  _check_extra_sources(config, dataset)
  metadata, indices = dataset.metadata, dataset.splits[split]
  return EvalData(split, dataset.source, indices, metadata['label'][indices],
                  metadata['image_id'][indices], metadata['group'][indices],
                  {'split': split, 'source': config.data.source, 'dataset': description.name,
                   'data_dir': config.data.data_dir})


def _check_extra_sources(config, dataset):
  """The extra training datasets (config.data.extra_train) are those the run recorded: they hold
  part of its train and val splits."""
  recorded = config.get('dataset')
  # Only runs with extras: a folder prepared by older code has no fingerprint to compare.
  if recorded is None or not (recorded.get('extra_train') or tuple(config.data.extra_train)):
    return

  def identities(fingerprint):
    return [(extra['name'], extra['metadata_sha256']) for extra in fingerprint.get('extra_train', [])]
  if identities(recorded) != identities(dataset.fingerprint):
    raise inference.RunInputError(
        f'The extra training datasets in {config.data.data_dir} are not those the run recorded in '
        f'its config.json ({identities(recorded)}, found {identities(dataset.fingerprint)}); pass '
        'the --data_dir the run trained on.')


def external_set(images_dir, labels_csv, run: inference.LoadedRun,
                 skip_bad_images: bool = False) -> EvalData:
  """A labelled folder of images, scored in the classes the run was trained on. An image that
  cannot be decoded stops it, or with `skip_bad_images` is left out and named in the report."""
  labelled = external.read_labels(labels_csv, run.description)
  paths = external.find_images(images_dir, labelled.image_ids)
  readable, skipped = external.check_readable(paths, skip_bad_images)
  labelled, paths = labelled.subset(readable), [p for p, ok in zip(paths, readable) if ok]
  note = patient_metadata.unknown_note(metadata_fields(run), labelled.columns,
                                       f'--labels_csv {labels_csv}')
  data = EvalData('external',
                  external.ImageFiles(paths, labelled.labels, labelled.rows),
                  np.arange(len(paths)), labelled.labels, labelled.image_ids, labelled.groups,
                  {'split': 'external', 'images_dir': str(images_dir),
                   'labels_csv': str(labels_csv), 'labels_format': labelled.csv_format,
                   'skipped_images': skipped, 'warnings': [note] if note else []},
                  labelled.score_weights)
  return _identified(images_dir, labels_csv, run, data)


def metadata_fields(run) -> tuple[str, ...]:
  """The patient metadata fields the run's model takes (any member's, for an ensemble)."""
  members = run.members if isinstance(run, ensemble.EnsembleRun) else [run]
  return tuple(dict.fromkeys(field for member in members
                             for field in member.config.model.get('metadata', ())))


def _identified(images_dir, labels_csv, run: inference.LoadedRun, data: EvalData) -> EvalData:
  """`data` named after the folder it came from and its content (eval_folders), as scored."""
  set_name = eval_folders.external_set_name(images_dir, labels_csv)
  class_names = np.asarray(run.description.class_names)[data.labels]
  digest = eval_folders.set_hash(data.image_ids, class_names, data.groups, data.score_weights)
  return dataclasses.replace(data, name=eval_folders.external_split(set_name, digest),
                             description={**data.description, 'set_name': set_name,
                                          'set_hash': digest})


def default_out_dir(run: inference.LoadedRun, data: EvalData, tta_mode: str) -> pathlib.Path:
  """W/eval/<split>-<checkpoint>[-tta_<mode>]: a TTA result never overwrites the plain one, nor
  one external set another's."""
  return run.workdir / 'eval' / f'{data.name}{eval_folders.suffix(run.checkpoint, tta_mode)}'


def evaluate_checkpoint(run: inference.LoadedRun, data: EvalData, out_dir: pathlib.Path, *,
                        tta_mode: str = 'none', bootstrap_seed: int = 0) -> dict:
  """Predicts `data` with the run's model and writes the full report into `out_dir`, unless
  `out_dir` holds the results of another set (a ValueError naming --out, before any prediction).

  `run` may also be an export run back by onnxruntime (skinjax.export.onnx_run.OnnxRun) or an
  ensemble of runs (ensemble.EnsembleRun), which offer the same `predict`, config, classes and
  names.
  """
  eval_folders.check_out_dir(out_dir, data.description)
  probs = run.predict(data.source, data.indices, tta_mode=tta_mode)
  config = run.config
  model = (run.report_fields() if isinstance(run, ensemble.EnsembleRun) else
           {'arch': config.model.arch, 'init': config.model.init,
            'image_size': config.data.image_size})
  extra = {'workdir': str(run.workdir), **model, 'num_params': run.num_params,
           'checkpoint': run.checkpoint, 'step': run.step, 'tta': tta_mode, **data.description}
  return report.write_report(pathlib.Path(out_dir), data.labels, probs, data.image_ids,
                             run.description, extra=extra, groups=data.groups,
                             bootstrap_seed=bootstrap_seed,
                             score_weights=data.score_weights, figures=config.eval.figures)

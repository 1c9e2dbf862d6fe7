r"""Evaluates a trained run's checkpoint: its own test split, another split or an external set.

  python scripts/evaluate.py --workdir=W [--checkpoint=best|latest|STEP] [--split=test|val|train]
      [--images_dir=DIR --labels_csv=CSV [--skip_bad_images]] [--tta=none|flip|flip_rot]
      [--out=DIR]
  python scripts/evaluate.py --onnx=DIR (the same set flags)
  python scripts/evaluate.py --workdir=W1,W2,... (the same flags: an ensemble)

The model and its preprocessing come from W (config.json and the checkpoint). With --images_dir
and --labels_csv it evaluates an external labelled set instead of a split, scored in the classes
of the run's training dataset; the CSV is either metadata-style (image_id,dx[,lesion_id]), the
ISIC 2018 Task 3 ground truth (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC), the ISIC 2019 one
(image,MEL,NV,BCC,AK,...,SCC,UNK: a HAM10000 model refuses SCC and UNK rows, an ISIC 2019 model
scores SCC) or the ISIC 2020 one (image_name,...,target, for a melanoma-against-benign model).
It writes W/eval/<split>-<checkpoint>[-tta_<mode>]/ (or --out): the training report's files
(the figures unless the run set config.eval.figures=false), ECE and 95% bootstrap intervals in
metrics.json, the AUC and sensitivity at 80/90/95% specificity of a binary melanoma model, and
predictions_isic.csv in the submission format of the training dataset's ISIC challenge.

An external set's split is external-<set name>-<set hash>: the set name is the folder it came
from (the labels file's folder when the images lie in it: derm7pt_dev/images with
derm7pt_dev/labels.csv is derm7pt_dev; else the images folder's name), the hash 8 hex digits of
its image ids, classes, lesion ids and score weights, so sets whose label files share a name never
share a folder (set_name and set_hash in metrics.json). A folder that already holds another set's
results, or the training report, is refused before anything is predicted: pass another --out.

For an ISIC ground truth it also reports the official score, as isic-challenge-scoring computes
it from that predictions_isic.csv: rows weighted by the truth's score_weight column, and
ISIC_0035068 (a duplicate in the ISIC 2018 test set) given weight 0. Rows of weight 0 are named
and left out of every metric; their predictions are still written.

A run trained with patient metadata (config.model.metadata) reads each external image's from the
labels CSV's columns (age or age_approx, sex, localization or anatom_site_general...); a column
the CSV lacks is unknown for every image, which one line on stderr and metrics.json say.
Every external image is decoded before any is predicted: the first that cannot be (truncated,
empty, not an image) stops the evaluation with one line naming it. --skip_bad_images leaves such
images out of the scored set instead, like scripts/prepare_dataset.py, and names them in one line
and in metrics.json (skipped_images: image and reason). A --tta other than the one the run's
recipe was validated with (config.eval.validated_tta) is evaluated, with a warning on stderr and
in metrics.json (warnings).

Several comma-separated --workdir runs are scored as one model, the mean of their softmax (each
member predicts through its own preprocessing and image size, with the same --tta views): folds
of scripts/cross_validate.py, architectures or image sizes trained on the same dataset. Runs that
predict other classes, or were trained on another dataset, are refused by name; on a split of the
dataset every member must have the same images in it (the folds share the test split only). The
report, default folder ensemble-<member>+<member>.../eval/<split>-<checkpoint>[-tta_<mode>]/ beside
the members, lists every member in metrics.json (members).

--onnx scores a model written by scripts/export.py (DIR or DIR/model.onnx) through onnxruntime,
on an external set or on the split of the dataset it was trained on (read from its model card),
into DIR/eval/<split>-onnx[-tta_<mode>]/ by default: the same report, from the deployed graph.
"""

import dataclasses
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import ensemble
from skinjax.evaluation import report
from skinjax.evaluation import tta
from skinjax.export import onnx_run
from skinjax.runtime import cli_flags
from skinjax.runtime import compilation_cache
from skinjax.training import config_checks

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to evaluate; several, '
                                'separated by commas, are scored as an ensemble.')
_ONNX = flags.DEFINE_string('onnx', None, 'Evaluate this export of scripts/export.py (DIR or '
                            'DIR/model.onnx) through onnxruntime instead of a --workdir.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step number.')
_SPLIT = flags.DEFINE_enum('split', 'test', checkpoint_eval.SPLITS,
                           "Which split of the run's own dataset to evaluate.")
_IMAGES_DIR = flags.DEFINE_string('images_dir', None, 'Folder of an external labelled test set.')
_LABELS_CSV = flags.DEFINE_string(
    'labels_csv', None,
    'Its labels: image_id,dx[,lesion_id] or the ISIC 2018/2019/2020 ground truth.')
_TTA = flags.DEFINE_enum('tta', 'none', tta.TTA_MODES,
                         'Average the softmax over flips (flip) or flips and rotations (flip_rot).')
_OUT = flags.DEFINE_string(
    'out', None, 'Output folder; default W/eval/<split>-<checkpoint>[-tta_<mode>], the split of an '
    'external set being external-<set name>-<set hash>; a folder holding another set is refused.')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                "Where the run's prepared dataset is, if not where it trained.")
_BOOTSTRAP_SEED = flags.DEFINE_integer('bootstrap_seed', 0, 'Seed of the bootstrap intervals.')
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    'skip_bad_images', False,
    'Leave unreadable --images_dir images out of the scores (listed in metrics.json).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  onnx_run.check_model_flags(_WORKDIR.value, _ONNX.value, flags.FLAGS['checkpoint'].present)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax and grain log every restore at INFO
  # Before the evaluation, not after it: a file in the way would otherwise lose the whole run.
  cli_flags.check_folder('out', _OUT.value)
  cli_flags.check_folder('data_dir', _DATA_DIR.value)
  compilation_cache.enable()
  try:
    if bool(_IMAGES_DIR.value) != bool(_LABELS_CSV.value):
      raise ValueError('An external set needs both --images_dir and --labels_csv.')
    if _IMAGES_DIR.value and (flags.FLAGS['split'].present or _DATA_DIR.value):
      raise ValueError("--split and --data_dir choose from the run's own dataset; leave them out "
                       'when evaluating --images_dir.')
    if _SKIP_BAD_IMAGES.value and not _IMAGES_DIR.value:
      raise ValueError("--skip_bad_images applies to --images_dir; the run's own dataset was "
                       'checked image by image when it was prepared.')
    if _WORKDIR.value and ',' in _WORKDIR.value:
      run = ensemble.load(_WORKDIR.value.split(','), _CHECKPOINT.value)
    else:
      run = onnx_run.load_model(_WORKDIR.value, _ONNX.value, _CHECKPOINT.value)
    warnings = [w for w in [config_checks.tta_warning(run.config, _TTA.value)] if w]
    for warning in warnings:
      print(warning, file=sys.stderr, flush=True)
    if _IMAGES_DIR.value:
      data = checkpoint_eval.external_set(_IMAGES_DIR.value, _LABELS_CSV.value, run,
                                          _SKIP_BAD_IMAGES.value)
    else:
      data = checkpoint_eval.run_split(run, _SPLIT.value, _DATA_DIR.value)
    for warning in data.description.get('warnings', []):  # e.g. metadata the CSV lacks
      print(warning, file=sys.stderr, flush=True)
    data = dataclasses.replace(data, description={
        **data.description, 'warnings': warnings + data.description.get('warnings', [])})
    out_dir = (pathlib.Path(_OUT.value).expanduser() if _OUT.value
               else checkpoint_eval.default_out_dir(run, data, _TTA.value))
    metrics = checkpoint_eval.evaluate_checkpoint(run, data, out_dir, tta_mode=_TTA.value,
                                                  bootstrap_seed=_BOOTSTRAP_SEED.value)
  except (ValueError, FileNotFoundError) as error:
    # Bad input: say what is wrong and how to fix it; the traceback only with --verbosity=1.
    logging.vlog(1, 'Traceback of the error below:', exc_info=True)
    sys.exit(f'error: {error}')
  ci = metrics['ci']
  print(f'{data.name}, {run.checkpoint} checkpoint (step {run.step}), tta {_TTA.value}, '
        f'written to {out_dir}:\n' + (out_dir / 'classification_report.txt').read_text()
        + report.format_summary(metrics) + '\n'
        + f"ECE {metrics['ece']:.4f}; 95% CI (by {ci['unit']}): "
        + ', '.join(f'{name} {_interval(ci[name])}'
                    for name in ('balanced_accuracy', 'macro_f1', 'melanoma_recall')))
  if data.description.get('skipped_images'):
    print(_skipped_summary(data.description['skipped_images'], out_dir / 'metrics.json'))


def _skipped_summary(skipped, metrics_path, named: int = 3) -> str:
  """One line: how many unreadable images were left out, the first few by name, and where all
  of them are listed."""
  names = ', '.join(f'{pathlib.Path(s["image"]).name} ({s["reason"]})' for s in skipped[:named])
  more = f' and {len(skipped) - named} more' if len(skipped) > named else ''
  return (f'Skipped {len(skipped)} unreadable image{"s" * (len(skipped) != 1)}, left out of the '
          f'scores: {names}{more}; all listed in {metrics_path} (skipped_images).')


def _interval(bounds) -> str:
  return 'n/a' if bounds is None else f'[{bounds[0]:.3f}, {bounds[1]:.3f}]'


if __name__ == '__main__':
  cli_flags.run(main)

r"""The study: the from-scratch baseline and the four ImageNet backbones, one after another.

  python scripts/run_study.py --data_dir=~/tensorflow_datasets --out=runs/study \
      [--override key=value ...] [--configs=configs/scratch_cnn.py,configs/vgg16.py,...] \
      [--images_dir=DIR --labels_csv=CSV] [--tta=none|flip|flip_rot]

Each config trains in OUT/<config name> through `python -m skinjax.main`, with every --override
passed on as --config.<key>=<value>. Run it again to continue: finished runs (with
W/report/metrics.json) are skipped and unfinished ones resume from their latest checkpoint. A
run that fails is reported and the others still run. With --images_dir and --labels_csv, every
finished run's best checkpoint is also scored on that external set by scripts/evaluate.py, into
W/eval/external-<set name>-<set hash>-best/ (named by the folder the set came from and its
content; see skinjax/evaluation/eval_folders.py), once: an earlier result that records the same
--images_dir and --labels_csv, in an older external-<csv name>-best/ too, counts as done. With
--tta=flip|flip_rot every score is evaluate.py's with those views, the test split's included
(W/eval/test-best-tta_<mode>/). It ends with scripts/compare.py's OUT/comparison.md and
OUT/comparison.png over the finished runs, one table per test set and training dataset.
"""

import pathlib
import sys

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# The configs import each other as the `configs` package of the repository root, and the
# overrides are checked here by loading them.
sys.path.insert(0, str(REPO))

from skinjax.evaluation import compare  # pylint: disable=g-import-not-at-top,wrong-import-position
from skinjax.evaluation import run_queue  # pylint: disable=g-import-not-at-top
from skinjax.evaluation import tta  # pylint: disable=g-import-not-at-top,wrong-import-position
from skinjax.runtime import cli_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

STUDY_CONFIGS = ('configs/scratch_cnn.py', 'configs/vgg16.py', 'configs/xception.py',
                 'configs/resnet50.py', 'configs/efficientnetb7.py')

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Prepared HAM10000 (config.data.data_dir).')
_OUT = flags.DEFINE_string('out', 'runs/study', 'One workdir per config goes in here.')
_OVERRIDES = flags.DEFINE_multi_string('override', [],
                                       'key=value for every run, e.g. train.num_epochs=10.')
_CONFIGS = flags.DEFINE_list('configs', list(STUDY_CONFIGS),
                             'Config files to run; each run is named after its file.')
_IMAGES_DIR = flags.DEFINE_string('images_dir', None,
                                  'Folder of an external labelled test set (as evaluate.py).')
_LABELS_CSV = flags.DEFINE_string('labels_csv', None, "That set's labels (as evaluate.py).")
_TTA = flags.DEFINE_enum('tta', 'none', tta.TTA_MODES,
                         'Score every run with these test-time views (evaluate.py --tta).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  external = run_queue.external_set(_IMAGES_DIR.value, _LABELS_CSV.value)
  cli_flags.check_folder('out', _OUT.value)
  cli_flags.check_folder('data_dir', _DATA_DIR.value)
  out = pathlib.Path(_OUT.value).expanduser().absolute()
  configs = [pathlib.Path(c).expanduser().absolute() for c in _CONFIGS.value]
  names = [c.stem for c in configs]
  missing = [str(c) for c in configs if not c.is_file()]
  if missing:
    sys.exit(f'error: --configs: no such file {", ".join(missing)}; give existing config files.')
  if len(set(names)) < len(names):
    sys.exit('error: --configs: two configs share a file name, and runs are named after it; '
             'rename one.')
  # A mistyped --override would fail every run, each after its own start-up: check them all
  # against every config first, as skinjax.main will parse them, and stop with one line.
  run_queue.check_overrides(configs, _DATA_DIR.value, _OVERRIDES.value)
  finished, failed = [], []
  for config, name in zip(configs, names):
    workdir = out / name
    (finished if run_queue.train(config, workdir, _DATA_DIR.value, _OVERRIDES.value)
     else failed).append(workdir)
  unscored = run_queue.score_all(finished, _TTA.value, *external)
  finished = [workdir for workdir in finished if workdir not in unscored]
  if finished:
    compare.write_comparison(finished, out, _TTA.value)
    print((out / 'comparison.md').read_text())
  problems = run_queue.problems(failed, unscored, len(configs))
  if problems:
    sys.exit(f'error: {"; ".join(problems)}. Fix the cause and run the same command again; '
             'finished runs and evaluations are kept.')


if __name__ == '__main__':
  cli_flags.run(main)

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

import json
import pathlib
import subprocess
import sys

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
# The configs import each other as the `configs` package of the repository root, and the
# overrides are checked here by loading them.
sys.path.insert(0, str(REPO))

from skinjax.evaluation import compare  # pylint: disable=g-import-not-at-top,wrong-import-position
from skinjax.evaluation import eval_folders  # pylint: disable=g-import-not-at-top
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


def config_args(config: pathlib.Path, data_dir, overrides) -> list[str]:
  flags_ = [f'--config={config}']
  if data_dir:
    flags_.append(f'--config.data.data_dir={data_dir}')
  for override in overrides:
    key, sep, value = override.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--override={override!r}: use key=value, e.g. train.num_epochs=10.')
    flags_.append(f'--config.{key.removeprefix("config.")}={value}')
  return flags_


def train_command(config: pathlib.Path, workdir: pathlib.Path, data_dir, overrides) -> list[str]:
  return [sys.executable, '-m', 'skinjax.main', *config_args(config, data_dir, overrides),
          f'--workdir={workdir}']


def evaluate_command(workdir: pathlib.Path, tta_mode: str, images_dir=None,
                     labels_csv=None) -> list[str]:
  external = [f'--images_dir={images_dir}', f'--labels_csv={labels_csv}'] if images_dir else []
  return [sys.executable, str(REPO / 'scripts' / 'evaluate.py'), f'--workdir={workdir}',
          f'--tta={tta_mode}', *external]


def scored_before(workdir: pathlib.Path, tta_mode: str, images_dir=None, labels_csv=None) -> bool:
  """Whether evaluate.py wrote this score before: the test split's folder, or an external set's
  whose metrics.json records the same images_dir and labels_csv (the set's hash would need the
  run's classes, so the files stand for the set here)."""
  suffix = compare.eval_suffix(tta_mode)
  if not labels_csv:
    return (workdir / 'eval' / f'test{suffix}' / 'metrics.json').is_file()
  pattern = f'{eval_folders.EXTERNAL_PREFIX}*{suffix}/metrics.json'
  for metrics_path in (workdir / 'eval').glob(pattern):
    recorded = json.loads(metrics_path.read_text())
    if [recorded.get('images_dir'), recorded.get('labels_csv')] == [str(images_dir),
                                                                    str(labels_csv)]:
      return True
  return False


def score(workdir: pathlib.Path, tta_mode: str, images_dir=None, labels_csv=None) -> bool:
  """Scores the run's best checkpoint on its test split or an external set, unless evaluate.py
  did before; False on failure."""
  if scored_before(workdir, tta_mode, images_dir, labels_csv):
    return True
  print(f'[{workdir.name}] scoring the best checkpoint on {labels_csv or "the test split"} '
        f'(tta {tta_mode}) ...', flush=True)
  result = subprocess.run(evaluate_command(workdir, tta_mode, images_dir, labels_csv), cwd=REPO)
  if result.returncode != 0:
    print(f'[{workdir.name}] evaluation failed (exit {result.returncode}); see its output above.',
          flush=True)
  return result.returncode == 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if bool(_IMAGES_DIR.value) != bool(_LABELS_CSV.value):
    raise app.UsageError('An external set needs both --images_dir and --labels_csv.')
  if _IMAGES_DIR.value:  # before hours of training, not after
    images_dir = pathlib.Path(_IMAGES_DIR.value).expanduser()
    labels_csv = pathlib.Path(_LABELS_CSV.value).expanduser()
    if not images_dir.is_dir():
      sys.exit(f'error: --images_dir={_IMAGES_DIR.value}: no such folder; give the folder of the '
               'external images.')
    if not labels_csv.is_file():
      sys.exit(f'error: --labels_csv={_LABELS_CSV.value}: no such file; give the ground-truth CSV '
               'of the external images.')
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
  for config in configs:
    config_file, *args = config_args(config, _DATA_DIR.value, _OVERRIDES.value)
    cli_flags.check_overrides(config_file.removeprefix('--config='), args)
  finished, failed, unscored = [], [], []
  for config, name in zip(configs, names):
    workdir = out / name
    if (workdir / 'report' / 'metrics.json').is_file():
      print(f'[{name}] finished before; skipping.')
      finished.append(workdir)
      continue
    print(f'[{name}] training in {workdir} ...', flush=True)
    # The trainer resumes from the latest checkpoint by itself. Run from the repository root:
    # configs import each other as the `configs` package.
    result = subprocess.run(train_command(config, workdir, _DATA_DIR.value, _OVERRIDES.value),
                            cwd=REPO)
    if result.returncode == 0:
      finished.append(workdir)
    else:
      print(f'[{name}] failed (exit {result.returncode}); see its output above.', flush=True)
      failed.append(name)
  for workdir in list(finished):
    # The training report has no TTA: with views, the test split is scored again.
    scored = _TTA.value == 'none' or score(workdir, _TTA.value)
    if scored and _IMAGES_DIR.value:
      scored = score(workdir, _TTA.value, images_dir.absolute(), labels_csv.absolute())
    if not scored:
      unscored.append(workdir.name)
      finished.remove(workdir)
  if finished:
    compare.write_comparison(finished, out, _TTA.value)
    print((out / 'comparison.md').read_text())
  problems = []
  if failed:
    problems.append(f'{len(failed)} of {len(configs)} runs failed to train: {", ".join(failed)}')
  if unscored:
    problems.append(f'{len(unscored)} trained runs could not be evaluated: {", ".join(unscored)}')
  if problems:
    sys.exit(f'error: {"; ".join(problems)}. Fix the cause and run the same command again; '
             'finished runs and evaluations are kept.')


if __name__ == '__main__':
  cli_flags.run(main)

"""Trains and scores runs one after another through the CLIs, as scripts/run_study.py and
scripts/cross_validate.py do: each run in a process of its own, resumed if it was stopped,
skipped if it finished, and each score computed once."""

import json
import pathlib
import subprocess
import sys

from absl import app

from skinjax.evaluation import compare
from skinjax.evaluation import eval_folders
from skinjax.runtime import cli_flags

REPO = pathlib.Path(__file__).resolve().parents[2]


def config_args(config: pathlib.Path, data_dir, overrides) -> list[str]:
  """skinjax.main's config flags: --config, the data_dir, and each key=value override."""
  flags_ = [f'--config={config}']
  if data_dir:
    flags_.append(f'--config.data.data_dir={data_dir}')
  for override in overrides:
    key, sep, value = override.partition('=')
    if not sep or not key:
      raise app.UsageError(f'--override={override!r}: use key=value, e.g. train.num_epochs=10.')
    flags_.append(f'--config.{key.removeprefix("config.")}={value}')
  return flags_


def check_overrides(configs, data_dir, overrides):
  """Each override parsed against each config as skinjax.main will parse it: a mistyped one would
  fail every run after its own start-up, so it is one error line before any training."""
  for config in configs:
    config_file, *args = config_args(config, data_dir, overrides)
    cli_flags.check_overrides(config_file.removeprefix('--config='), args)


def train_command(config: pathlib.Path, workdir: pathlib.Path, data_dir, overrides) -> list[str]:
  return [sys.executable, '-m', 'skinjax.main', *config_args(config, data_dir, overrides),
          f'--workdir={workdir}']


def train(config: pathlib.Path, workdir: pathlib.Path, data_dir, overrides) -> bool:
  """Trains (or resumes) the run in `workdir` unless it finished before; False on failure."""
  name = workdir.name
  if (workdir / 'report' / 'metrics.json').is_file():
    print(f'[{name}] finished before; skipping.')
    return True
  print(f'[{name}] training in {workdir} ...', flush=True)
  # The trainer resumes from the latest checkpoint by itself. Run from the repository root:
  # configs import each other as the `configs` package.
  result = subprocess.run(train_command(config, workdir, data_dir, overrides), cwd=REPO)
  if result.returncode != 0:
    print(f'[{name}] failed (exit {result.returncode}); see its output above.', flush=True)
  return result.returncode == 0


def evaluate_command(workdir: pathlib.Path, tta_mode: str, images_dir=None,
                     labels_csv=None) -> list[str]:
  external = [f'--images_dir={images_dir}', f'--labels_csv={labels_csv}'] if images_dir else []
  return [sys.executable, str(REPO / 'scripts' / 'evaluate.py'), f'--workdir={workdir}',
          f'--tta={tta_mode}', *external]


def scored_before(workdir: pathlib.Path, tta_mode: str, images_dir=None, labels_csv=None) -> bool:
  """Whether evaluate.py wrote this score before (`scored_metrics`)."""
  return scored_metrics(workdir, tta_mode, images_dir, labels_csv) is not None


def scored_metrics(workdir: pathlib.Path, tta_mode: str, images_dir=None,
                   labels_csv=None) -> pathlib.Path | None:
  """The metrics.json evaluate.py wrote for this score: the test split's folder, or an external
  set's whose metrics.json records the same images_dir and labels_csv (the set's hash would need
  the run's classes, so the files stand for the set here); None if there is none."""
  suffix = compare.eval_suffix(tta_mode)
  if not labels_csv:
    path = workdir / 'eval' / f'test{suffix}' / 'metrics.json'
    return path if path.is_file() else None
  pattern = f'{eval_folders.EXTERNAL_PREFIX}*{suffix}/metrics.json'
  for metrics_path in sorted((workdir / 'eval').glob(pattern)):
    recorded = json.loads(metrics_path.read_text())
    if [recorded.get('images_dir'), recorded.get('labels_csv')] == [str(images_dir),
                                                                    str(labels_csv)]:
      return metrics_path
  return None


def score(workdir: pathlib.Path, tta_mode: str, images_dir=None, labels_csv=None,
          members=None) -> bool:
  """Scores the run's best checkpoint on its test split or an external set, unless evaluate.py
  did before; False on failure. With `members`, the ensemble of those runs, whose evaluations go
  to `workdir` (skinjax.evaluation.ensemble.default_workdir)."""
  if scored_before(workdir, tta_mode, images_dir, labels_csv):
    return True
  what = f'the {len(members)} runs as one model' if members else 'the best checkpoint'
  print(f'[{workdir.name}] scoring {what} on {labels_csv or "the test split"} '
        f'(tta {tta_mode}) ...', flush=True)
  evaluated = ','.join(str(w) for w in members) if members else workdir
  result = subprocess.run(evaluate_command(evaluated, tta_mode, images_dir, labels_csv), cwd=REPO)
  if result.returncode != 0:
    print(f'[{workdir.name}] evaluation failed (exit {result.returncode}); see its output above.',
          flush=True)
  return result.returncode == 0


def score_all(workdirs, tta_mode: str, images_dir=None, labels_csv=None) -> list[pathlib.Path]:
  """Scores each run (the test split again with TTA; the external set when given) and returns
  those that could not be scored."""
  unscored = []
  for workdir in workdirs:
    # The training report has no TTA: with views, the test split is scored again.
    scored = tta_mode == 'none' or score(workdir, tta_mode)
    if scored and images_dir:
      scored = score(workdir, tta_mode, images_dir, labels_csv)
    if not scored:
      unscored.append(workdir)
  return unscored


def external_set(images_dir: str | None, labels_csv: str | None) -> tuple:
  """(images_dir, labels_csv) as absolute paths, () without a set; checked before hours of
  training, not after (a usage error of one line)."""
  if bool(images_dir) != bool(labels_csv):
    raise app.UsageError('An external set needs both --images_dir and --labels_csv.')
  if not images_dir:
    return ()
  folder = pathlib.Path(images_dir).expanduser().absolute()
  labels = pathlib.Path(labels_csv).expanduser().absolute()
  if not folder.is_dir():
    raise app.UsageError(f'--images_dir={images_dir}: no such folder; give the folder of the '
                         'external images.')
  if not labels.is_file():
    raise app.UsageError(f'--labels_csv={labels_csv}: no such file; give the ground-truth CSV of '
                         'the external images.')
  return folder, labels


def problems(failed, unscored, total: int, noun: str = 'runs') -> list[str]:
  """What went wrong, a phrase each, naming the runs (workdirs) that failed."""
  found = []
  if failed:
    found.append(f'{len(failed)} of {total} {noun} failed to train: '
                 f'{", ".join(w.name for w in failed)}')
  if unscored:
    found.append(f'{len(unscored)} trained {noun} could not be evaluated: '
                 f'{", ".join(w.name for w in unscored)}')
  return found

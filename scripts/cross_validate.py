r"""Lesion-grouped k-fold cross-validation of one config: every fold trained, scored and summed up.

  python scripts/cross_validate.py --config=configs/cpu_transfer.py --folds=3 --out=runs/cv \
      [--data_dir=~/tensorflow_datasets] [--override key=value ...] [--tta=none|flip|flip_rot] \
      [--images_dir=DIR --labels_csv=CSV]

Fold i trains in OUT/fold_<i> through `python -m skinjax.main` with config.data.folds=K and
config.data.fold=i: the test split is the config's own, the same for every fold, and its train and
val images are dealt into K folds grouped by lesion (or patient) and stratified by class, fold i
validating (skinjax/data/splits.py, fold_splits). Run it again to continue, as
scripts/run_study.py: finished folds are skipped and unfinished ones resume. Every finished fold's
best checkpoint is scored by scripts/evaluate.py on the test split (again, with --tta) and on the
external set when given.

Then the folds' ensemble (the mean of their softmax: scripts/evaluate.py with every fold's
--workdir) is scored the same way, into OUT/ensemble-fold_0+...+fold_<K-1>/eval/. It ends with OUT/folds.md and
OUT/folds.json: a table per test set with each fold's figures and 95% intervals, the folds'
mean ± sd (the sample standard deviation over folds), and the ensemble's row.
"""

import json
import pathlib
import statistics
import sys

from absl import app
from absl import flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the configs import each other as the `configs` package

from skinjax.evaluation import compare  # pylint: disable=g-import-not-at-top,wrong-import-position
from skinjax.evaluation import ensemble  # pylint: disable=g-import-not-at-top
from skinjax.evaluation import run_queue  # pylint: disable=g-import-not-at-top
from skinjax.evaluation import tta  # pylint: disable=g-import-not-at-top,wrong-import-position
from skinjax.runtime import cli_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = flags.DEFINE_string('config', None, 'The config file every fold trains with.')
_FOLDS = flags.DEFINE_integer('folds', 3, 'How many folds (config.data.folds), 2 or more.')
_OUT = flags.DEFINE_string('out', None, 'OUT/fold_<i> per fold, the ensemble beside them, the '
                           'tables.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Where the datasets are prepared '
                                '(config.data.data_dir).')
_OVERRIDES = flags.DEFINE_multi_string('override', [],
                                       'key=value for every fold, e.g. train.num_epochs=10.')
_IMAGES_DIR = flags.DEFINE_string('images_dir', None,
                                  'Folder of an external labelled test set (as evaluate.py).')
_LABELS_CSV = flags.DEFINE_string('labels_csv', None, "That set's labels (as evaluate.py).")
_TTA = flags.DEFINE_enum('tta', 'none', tta.TTA_MODES,
                         'Score every fold with these test-time views (evaluate.py --tta).')

FOLD_KEYS = ('data.folds', 'data.fold')


def fold_overrides(folds: int, fold: int, overrides) -> list[str]:
  return [*overrides, f'data.folds={folds}', f'data.fold={fold}']


def summary(rows: list[dict]) -> dict:
  """{metric: (mean, sample sd)} over the folds' rows; sd None for a single fold."""
  result = {}
  for key, _ in compare.METRICS:
    values = [row[key] for row in rows if row.get(key) is not None]
    if not values:
      continue
    result[key] = (statistics.mean(values),
                   statistics.stdev(values) if len(values) > 1 else None)
  return result


def _cell(row: dict, key: str) -> str:
  value = row.get(key)
  if value is None:
    return 'n/a'
  bounds = row.get('ci', {}).get(key)
  return f'{value:.3f}' + (f' [{bounds[0]:.3f}, {bounds[1]:.3f}]' if bounds else '')


def table(title: str, fold_rows: list[dict], ensemble_row: dict) -> str:
  header = '| run | ' + ' | '.join(name for _, name in compare.METRICS) + ' |'
  lines = [f'## {title}', '', header, '|' + '---|' * (len(compare.METRICS) + 1)]
  for row in fold_rows:
    lines.append(f'| {row["name"]} | ' + ' | '.join(_cell(row, k) for k, _ in compare.METRICS)
                 + ' |')
  stats = summary(fold_rows)
  lines.append('| mean ± sd of the folds | ' + ' | '.join(
      'n/a' if k not in stats else
      f'{stats[k][0]:.3f} ± {stats[k][1]:.3f}' if stats[k][1] is not None else f'{stats[k][0]:.3f}'
      for k, _ in compare.METRICS) + ' |')
  if len(ensemble_row) > 1:  # scored: more than its name
    lines.append(f'| ensemble of the {len(fold_rows)} folds | '
                 + ' | '.join(_cell(ensemble_row, k) for k, _ in compare.METRICS) + ' |')
  return '\n'.join(lines) + '\n'


def _scores_of(metrics_path: pathlib.Path | None, name: str) -> dict:
  """A table row from an evaluate.py metrics.json; only the name when there is none."""
  if metrics_path is None or not metrics_path.is_file():
    return {'name': name}
  metrics = json.loads(metrics_path.read_text())
  return {'name': name, **compare.table_scores(metrics, metrics.get('ci', {}))}


def write_tables(out: pathlib.Path, workdirs, tta_mode: str, external=()):
  """OUT/folds.md and OUT/folds.json from what the trainer and evaluate.py wrote."""
  together = ensemble.default_workdir(workdirs)
  # The test split as scripts/compare.py reads it: the training report when it has no TTA.
  sections = [('the test split', [compare.read_run(w, tta_mode) for w in workdirs],
               _scores_of(run_queue.scored_metrics(together, tta_mode), 'ensemble'))]
  if external:
    sections.append((
        f'{external[1]} (external)',
        [_scores_of(run_queue.scored_metrics(w, tta_mode, *external), w.name) for w in workdirs],
        _scores_of(run_queue.scored_metrics(together, tta_mode, *external), 'ensemble')))
  text = [f'# {len(workdirs)}-fold cross-validation (tta {tta_mode})', '']
  text += [table(title, rows, ensemble_row) for title, rows, ensemble_row in sections]
  (out / 'folds.md').write_text('\n'.join(text))
  (out / 'folds.json').write_text(json.dumps(
      {title: {'folds': [{k: row.get(k) for k in ('name', *compare.CI_KEYS, 'accuracy', 'ci')}
                         for row in rows],
               'mean_sd': summary(rows), 'ensemble': ensemble_row}
       for title, rows, ensemble_row in sections}, indent=1) + '\n')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not _CONFIG.value or not _OUT.value:
    raise app.UsageError('Give --config (the config every fold trains with) and --out.')
  if _FOLDS.value < 2:
    raise app.UsageError(f'--folds={_FOLDS.value}: use 2 or more folds.')
  if any(o.partition('=')[0].removeprefix('config.') in FOLD_KEYS for o in _OVERRIDES.value):
    raise app.UsageError('--override of data.folds or data.fold: this script sets them; give '
                         '--folds instead.')
  external = run_queue.external_set(_IMAGES_DIR.value, _LABELS_CSV.value)
  config = pathlib.Path(_CONFIG.value).expanduser().absolute()
  if not config.is_file():
    sys.exit(f'error: --config={_CONFIG.value}: no such file; give an existing config file.')
  cli_flags.check_folder('out', _OUT.value)
  cli_flags.check_folder('data_dir', _DATA_DIR.value)
  out = pathlib.Path(_OUT.value).expanduser().absolute()
  folds = _FOLDS.value
  run_queue.check_overrides([config], _DATA_DIR.value, fold_overrides(folds, 0, _OVERRIDES.value))
  workdirs = [out / f'fold_{i}' for i in range(folds)]
  failed = [w for i, w in enumerate(workdirs) if not run_queue.train(
      config, w, _DATA_DIR.value, fold_overrides(folds, i, _OVERRIDES.value))]
  finished = [w for w in workdirs if w not in failed]
  unscored = run_queue.score_all(finished, _TTA.value, *external)
  problems = run_queue.problems(failed, unscored, folds, 'folds')
  if not problems:
    for files in ((), external) if external else ((),):
      if not run_queue.score(ensemble.default_workdir(workdirs), _TTA.value, *files,
                             members=workdirs):
        problems.append(f'the ensemble could not be evaluated on '
                        f'{files[1] if files else "the test split"}')
  if not failed and not unscored:
    write_tables(out, workdirs, _TTA.value, external)
    print((out / 'folds.md').read_text())
  if problems:
    sys.exit(f'error: {"; ".join(problems)}. Fix the cause and run the same command again; '
             'finished folds and evaluations are kept.')


if __name__ == '__main__':
  cli_flags.run(main, name=None)  # --config is a path here, not a config_flags config

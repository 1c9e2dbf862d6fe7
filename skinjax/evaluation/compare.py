"""Side by side: which backbone suits skin-lesion classification, what ImageNet init buys, and
how each run holds up on images from elsewhere.

One row per run, read from what the run wrote: W/config.json, W/report/metrics.json (the
trainer's test report) and, when scripts/evaluate.py has been run on it, W/eval/test-best/.
Intervals come from the first that has them: W/eval/test-best/metrics.json, W/report/metrics.json,
or a bootstrap over W/report/predictions.csv (runs reported before intervals existed).

Only the same exam is ranked: runs are grouped by the dataset they were trained and tested on,
and how it was split (test_exam); comparison.md says first which groups there are, and each group
gets its own test-split table and verdict. A test split of another dataset is another exam, and another dataset's classes may
differ, so no figure is ranked across groups, on the test splits or on an external set.

External test sets come from evaluate.py's default folders for the best checkpoint (as on the
test split), W/eval/external-<set name>-<set hash>-best/ (eval_folders; older folders,
external-<labels CSV name>-best/, are read too): one section per set, named by the folder the set
came from, with a table per training dataset and the gap between the set's balanced accuracy and
the test split's. A run of that dataset not scored on the set shows n/a.

With tta='flip' or 'flip_rot', every score comes from evaluate.py's folders of that mode instead
(W/eval/test-best-tta_<mode>/, W/eval/external-...-best-tta_<mode>/): each run is then scored
the same way, and a run its test split was not evaluated on that way is refused by name.
"""

import csv
import json
import math
import pathlib

import numpy as np

from skinjax.data import datasets
from skinjax.evaluation import eval_folders
from skinjax.evaluation import metrics as eval_metrics
from skinjax.evaluation import tta as tta_views
from skinjax.evaluation.deferred import pyplot as plt

# (metrics.json key, column title); the first four carry 95% intervals.
METRICS = (('balanced_accuracy', 'balanced acc.'), ('macro_f1', 'macro-F1'),
           ('melanoma_recall', 'melanoma recall'), ('macro_auc', 'macro AUC'),
           ('accuracy', 'accuracy'))
CI_KEYS = tuple(key for key, _ in METRICS[:4])


def eval_suffix(tta: str) -> str:
  """evaluate.py's folders for the best checkpoint end in this (eval/<split><suffix>)."""
  if tta not in tta_views.TTA_MODES:
    raise CompareError(f'tta={tta!r} is not one of {", ".join(tta_views.TTA_MODES)}.')
  return eval_folders.suffix('best', tta)


class CompareError(ValueError):
  """A workdir that cannot be compared; the message says what is missing and how to get it."""


def read_run(workdir, tta: str = 'none') -> dict:
  """One table row: what the run is, what it cost, and how it scored on its test split."""
  workdir = pathlib.Path(workdir).expanduser()
  eval_subdir = pathlib.Path('eval') / f'test{eval_suffix(tta)}'
  report_path = workdir / 'report' / 'metrics.json'
  if not workdir.exists():  # a mistyped path, not an unfinished run
    raise CompareError(f'{workdir} does not exist; check the path of the run.')
  if not workdir.is_dir():
    raise CompareError(f'{workdir} is a file, not a run folder; pass the --workdir of a run.')
  if not report_path.is_file():
    raise CompareError(
        f'{workdir} has no report/metrics.json: the run has not finished. Finish it by running '
        f'its python -m skinjax.main command again (it resumes), or leave it out.')
  config = _read_json(workdir / 'config.json') if (workdir / 'config.json').is_file() else {}
  trained = _read_json(report_path)
  timing_path = workdir / 'report' / 'timing.json'
  timing = _read_json(timing_path) if timing_path.is_file() else {}
  evaluated_path = workdir / eval_subdir / 'metrics.json'
  evaluated = _read_json(evaluated_path) if evaluated_path.is_file() else None
  if evaluated is None and tta != 'none':  # the training report has no TTA: not the same exam
    raise CompareError(f'{workdir} has no {eval_subdir}/metrics.json; run python '
                       f'scripts/evaluate.py --workdir={workdir} --tta={tta} first.')
  # The evaluation scores the same best checkpoint on the same split, with intervals by lesion.
  if evaluated and 'ci' in evaluated:
    scores, ci, ci_source = evaluated, evaluated['ci'], f'{eval_subdir}/metrics.json'
  elif 'ci' in trained:
    scores, ci, ci_source = trained, trained['ci'], 'report/metrics.json'
  else:
    scores, ci_source = trained, 'report/predictions.csv'
    ci = _bootstrap_from_predictions(workdir / 'report' / 'predictions.csv',
                                     datasets.of_run(config))
  model = config.get('model', {})
  return {
      'name': workdir.name,
      'workdir': str(workdir),
      'dataset': test_exam(config),
      'arch': trained.get('arch', model.get('arch')),
      'init': trained.get('init', model.get('init')),
      'num_params': trained.get('num_params'),
      'image_size': trained.get('image_size', config.get('data', {}).get('image_size')),
      'epochs_run': trained.get('epochs_run'),
      'train_time_s': (timing.get('train_time_s') or trained.get('train_time_s')
                       or _epoch_time_sum(workdir / 'metrics.jsonl')),
      'num_examples': scores.get('num_examples'),
      **table_scores(scores, ci),
      'ci_unit': ci.get('unit'),
      'ci_source': ci_source,
      'external': read_external_sets(workdir, tta),
      'tta': tta,
  }


# How the trainer splits a dataset unless told otherwise (configs/base.py).
DEFAULT_SPLIT = {'split': 'lesion_grouped', 'split_seed': 0, 'split_fractions': [0.6, 0.2, 0.2]}


def test_exam(config: dict) -> str:
  """The exam a run's test split is: its dataset, and how it was split when not as by default.

  Runs are ranked only against runs of the same exam. The same dataset split another way tests
  other images, and the study's per-image split ('random_image') puts images of one lesion on
  both sides, which flatters a run; so each split is an exam of its own.
  """
  name = datasets.of_run(config).name
  data = config.get('data', {})
  split = {key: data.get(key, default) for key, default in DEFAULT_SPLIT.items()}
  split['split_fractions'] = [float(f) for f in split['split_fractions']]
  if split == DEFAULT_SPLIT:
    return name
  fractions = '/'.join(f'{f:g}' for f in split['split_fractions'])
  return f"{name} ({split['split']} split {fractions}, seed {split['split_seed']})"


def table_scores(metrics: dict, ci: dict) -> dict:
  """A table row's figures: METRICS from a metrics.json, and the intervals of CI_KEYS."""
  return {**{key: metrics.get(key) for key, _ in METRICS},
          'ci': {key: ci.get(key) for key in CI_KEYS}}


def read_external_sets(workdir: pathlib.Path, tta: str = 'none') -> dict[str, dict]:
  """{set key: scores} for each external set evaluate.py scored the best checkpoint on; the key
  tells sets apart (eval_folders.external_set_of), `set_name` is the folder a set came from."""
  sets = {}
  suffix = eval_suffix(tta)
  # The pattern ends in the suffix, so with '-best' the TTA folders (…-best-tta_flip) stay out.
  for folder in sorted((workdir / 'eval').glob(f'{eval_folders.EXTERNAL_PREFIX}*{suffix}')):
    metrics_path = folder / 'metrics.json'
    if not metrics_path.is_file():  # an evaluation stopped before its report
      continue
    metrics = _read_json(metrics_path)
    key, name, detail = eval_folders.external_set_of(folder, metrics, suffix)
    sets[key] = {**table_scores(metrics, metrics.get('ci', {})),
                 'num_examples': metrics.get('num_examples'),
                 'ci_unit': metrics.get('ci', {}).get('unit'),
                 'set_name': name, 'set_detail': detail,
                 'source': str(metrics_path.relative_to(workdir))}
  return sets


def _read_json(path: pathlib.Path) -> dict:
  try:
    return json.loads(path.read_text())
  except ValueError as error:
    raise CompareError(f'{path} is not valid JSON ({error}); rerun what wrote it.') from None


def _epoch_time_sum(metrics_log: pathlib.Path) -> float | None:
  """Training time from the per-epoch summaries, for reports that did not record it."""
  if not metrics_log.is_file():
    return None
  times = [json.loads(line).get('epoch_time_s') for line in metrics_log.read_text().splitlines()
           if line.strip()]
  times = [t for t in times if t is not None]
  return float(sum(times)) if times else None


def _bootstrap_from_predictions(path: pathlib.Path, description: datasets.DatasetDescription) -> dict:
  if not path.is_file():
    raise CompareError(f'{path} is missing, so there is nothing to compute intervals from; run '
                       f'python scripts/evaluate.py --workdir={path.parents[1]}.')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  names = list(description.class_names)
  labels = np.array([names.index(r['label']) for r in rows])
  preds = np.array([names.index(r['pred']) for r in rows])
  probs = np.array([[float(r[f'prob_{name}']) for name in names] for r in rows])
  column = description.group_column
  groups = np.array([r[column] for r in rows]) if rows and column in rows[0] else None
  return eval_metrics.bootstrap_intervals(labels, preds, len(names), description.melanoma_index,
                                          groups, unit=column.removesuffix('_id') if column else '',
                                          probs=probs)


def _fmt(value, digits=3) -> str:
  return 'n/a' if value is None else f'{value:.{digits}f}'


def _fmt_ci(value, interval) -> str:
  if value is None:
    return 'n/a'
  if interval is None:
    return f'{value:.3f}'
  return f'{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]'


def _fmt_params(n) -> str:
  if n is None:
    return 'n/a'
  return f'{n / 1e6:.2f}M' if n >= 1e5 else f'{n / 1e3:.1f}k'


def _fmt_time(seconds) -> str:
  if seconds is None:
    return 'n/a'
  if seconds < 120:
    return f'{seconds:.0f} s'
  return f'{seconds / 60:.1f} min' if seconds < 7200 else f'{seconds / 3600:.1f} h'


HEADER = ('run', 'arch', 'init', 'params', 'image size', 'epochs', 'train time', 'accuracy',
          'balanced acc. [95% CI]', 'macro-F1 [95% CI]', 'melanoma recall [95% CI]',
          'macro AUC [95% CI]')
EXTERNAL_HEADER = ('run', 'images', 'balanced acc. [95% CI]', 'macro-F1 [95% CI]',
                   'melanoma recall [95% CI]', 'macro AUC [95% CI]', 'accuracy',
                   'gap in balanced acc. (external - test)')


def _ci_cells(scores: dict) -> list[str]:
  return [_fmt_ci(scores[key], scores['ci'][key]) for key in CI_KEYS]


def table_row(run: dict) -> list[str]:
  return [run['name'], str(run['arch']), str(run['init']), _fmt_params(run['num_params']),
          str(run['image_size']), str(run['epochs_run']), _fmt_time(run['train_time_s']),
          _fmt(run['accuracy']), *_ci_cells(run)]


def external_row(run: dict, set_key: str) -> list[str]:
  scores = run['external'].get(set_key)
  if scores is None:
    return [run['name'], 'not evaluated', *['n/a'] * (len(EXTERNAL_HEADER) - 2)]
  gap = (None if scores['balanced_accuracy'] is None or run['balanced_accuracy'] is None
         else scores['balanced_accuracy'] - run['balanced_accuracy'])
  return [run['name'], str(scores['num_examples']), *_ci_cells(scores), _fmt(scores['accuracy']),
          'n/a' if gap is None else f'{gap:+.3f}']


def by_dataset(runs: list[dict]) -> dict[str, list[dict]]:
  """The runs grouped by the dataset they were trained and tested on, in the order given: only
  runs of one group sat the same exam."""
  groups = {}
  for run in runs:
    groups.setdefault(run['dataset'], []).append(run)
  return groups


def external_sets(runs: list[dict]) -> dict[str, str]:
  """{set key: title} of every external set a run was scored on, by title: the folder the set
  came from, with its detail (set hash, labels file) when two sets share that name."""
  found = {}
  for run in runs:
    for key, scores in run['external'].items():
      found.setdefault(key, (scores['set_name'], scores['set_detail']))
  names = [name for name, _ in found.values()]
  titles = {key: name if names.count(name) == 1 else f'{name} ({detail})'
            for key, (name, detail) in found.items()}
  return dict(sorted(titles.items(), key=lambda item: (item[1], item[0])))


def _names(runs: list[dict]) -> str:
  return ', '.join(run['name'] for run in runs)


def comparability(groups: dict[str, list[dict]], sets: dict[str, str]) -> list[str]:
  """What may be ranked against what: the first thing comparison.md says."""
  if len(groups) == 1:
    [(dataset, members)] = groups.items()
    lines = [f'All {len(members)} runs were trained and tested on {dataset}: one exam, ranked '
             'together.' if len(members) > 1
             else f'One run, trained and tested on {dataset}: nothing to rank it against.']
  else:
    lines = [f'Not comparable across datasets: these runs were trained and tested on '
             f'{len(groups)} datasets, and the test split of one is another exam than the '
             "other's (their classes may differ too). Each dataset's runs are tabled and ranked "
             'apart, on their test split and on every external set; no figure is ranked across '
             'datasets.', '']
    lines += [f'- trained on {dataset}: {_names(members)}' for dataset, members in groups.items()]
  if sets:
    runs = [run for members in groups.values() for run in members]
    lines += ['', 'External test sets, named by the folder they came from:', '']
    lines += [f"- {title}: scored for {_names([r for r in runs if key in r['external']])}"
              for key, title in sets.items()]
  return lines


def _table(header, rows) -> list[str]:
  return (['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
          + ['| ' + ' | '.join(row) + ' |' for row in rows])


def _external_section(key: str, title: str, groups: dict[str, list[dict]]) -> list[str]:
  """One external set: a table and a verdict per training dataset whose runs were scored on it."""
  source = next(run['external'][key]['source'] for members in groups.values()
                for run in members if key in run['external'])
  lines = ['', f'## External test set: {title}', '',
           f'Images from outside the training data, scored by scripts/evaluate.py '
           f'(W/{pathlib.PurePath(source).parent}/); the gap is this balanced accuracy minus the '
           "run's test split's. Runs are ranked only against runs of the same training dataset."]
  for dataset, members in groups.items():
    scored = [run for run in members if key in run['external']]
    if not scored:
      continue
    if len(groups) > 1:
      lines += ['', f'### Runs trained on {dataset}']
    lines += ['', *_table(EXTERNAL_HEADER, [external_row(run, key) for run in members])]
    lines += ['', _verdict([{**run, **run['external'][key]} for run in scored])]
  return lines


def markdown(runs: list[dict]) -> str:
  tta = runs[0].get('tta', 'none') if runs else 'none'
  views = '' if tta == 'none' else f' Every score averages the softmax over TTA views ({tta}).'
  groups, sets = by_dataset(runs), external_sets(runs)
  lines = ['# Run comparison', '', *comparability(groups, sets), '',
           'Best checkpoint. Balanced accuracy (mean per-class recall) is the ISIC 2018 metric; '
           'intervals are 95% percentile bootstraps (1000 resamples).' + views]
  for dataset, members in groups.items():
    lines += ['', f'## Test split of {dataset}', '']
    lines += _table(HEADER, [table_row(run) for run in members])
    lines += ['', _verdict(members)]
  for key, title in sets.items():
    lines += _external_section(key, title, groups)
  lines += ['', 'Sources:']
  for run in runs:
    lines.append(f"- {run['name']}: {run['workdir']}; dataset {run['dataset']}; "
                 f"n={run['num_examples']}; intervals from {run['ci_source']}, resampled by "
                 f"{run['ci_unit']}")
    lines += [f"  - {scores['set_name']}: {scores['source']}, n={scores['num_examples']}, "
              f"resampled by {scores['ci_unit']}" for scores in run['external'].values()]
  return '\n'.join(lines) + '\n'


def _verdict(runs: list[dict]) -> str:
  """The highest balanced accuracy among `runs` (one exam), and which runs it is not clearly
  ahead of."""
  scored = [r for r in runs if r['balanced_accuracy'] is not None]
  if not scored:
    return 'No run has a balanced accuracy.'
  if len(scored) == 1:
    return f"Only {scored[0]['name']} has a balanced accuracy here: nothing to rank."
  best = max(scored, key=lambda r: r['balanced_accuracy'])
  text = f"Highest balanced accuracy: {best['name']} ({best['arch']}, {best['init']})"
  low = (best['ci']['balanced_accuracy'] or [None])[0]
  # Overlapping 95% intervals: the ranking between those runs may be chance.
  close = [r['name'] for r in scored if r is not best and low is not None
           and r['ci']['balanced_accuracy'] is not None and r['ci']['balanced_accuracy'][1] >= low]
  if close:
    text += f"; its interval overlaps those of {', '.join(close)}"
  return text + '.'


# Two panels a row at 100 dpi: 1600 px, readable at a page's full width without zooming.
PANEL_SIZE_IN = (8, 4.5)
PANELS_PER_ROW = 2
DPI = 100


def panels(runs: list[dict]) -> list[tuple[str, list[tuple[dict, dict | None]]]]:
  """(title, [(run, its scores or None)]) per panel: each training dataset's test split, then
  each external set once per training dataset scored on it; a panel holds one exam only."""
  groups, sets = by_dataset(runs), external_sets(runs)
  found = [(f'test split of {dataset}', [(run, run) for run in members])
           for dataset, members in groups.items()]
  for key, title in sets.items():
    for dataset, members in groups.items():
      if any(key in run['external'] for run in members):
        found.append((f'{title} (trained on {dataset})' if len(groups) > 1 else title,
                      [(run, {**run, **run['external'][key]} if key in run['external'] else None)
                       for run in members]))
  return found


def _plot_panel(ax, title: str, entries, colours: dict):
  """Grouped bars: one group per metric, one bar per run, whiskers at the 95% intervals."""
  width = 0.8 / len(entries)
  positions = np.arange(len(METRICS))
  for i, (run, scores) in enumerate(entries):
    if scores is None:  # not scored on this set: its slot stays empty
      continue
    x = positions + (i - (len(entries) - 1) / 2) * width
    values = [np.nan if scores[key] is None else scores[key] for key, _ in METRICS]
    ax.bar(x, np.nan_to_num(values), width, color=colours[run['name']],
           label=f"{run['name']} ({run['arch']}, {run['init']})")
    for j, key in enumerate(CI_KEYS):
      interval = scores['ci'][key]
      if interval is not None and scores[key] is not None:
        ax.errorbar(x[j], scores[key], yerr=[[max(scores[key] - interval[0], 0)],
                                             [max(interval[1] - scores[key], 0)]],
                    color='black', capsize=3, lw=1, fmt='none')
  ax.set_xticks(positions, [name for _, name in METRICS])
  ax.set(ylim=(0, 1.05), ylabel='score')
  ax.set_title(title, fontsize=12)
  ax.grid(axis='y', alpha=0.3)


def plot(runs: list[dict], path: pathlib.Path):
  """One panel per exam (see `panels`), PANELS_PER_ROW a row, one legend for every run."""
  found = panels(runs)
  columns = min(len(found), PANELS_PER_ROW)
  rows = math.ceil(len(found) / columns)
  legend_rows = math.ceil(len(runs) / columns)
  palette = plt.get_cmap('tab10' if len(runs) <= 10 else 'tab20')
  colours = {run['name']: palette(i % palette.N) for i, run in enumerate(runs)}
  fig, axes = plt.subplots(rows, columns, squeeze=False, layout='constrained', figsize=(
      PANEL_SIZE_IN[0] * columns, PANEL_SIZE_IN[1] * rows + 0.3 * legend_rows + 0.5))
  for ax, (title, entries) in zip(axes.flat, found):
    _plot_panel(ax, title, entries, colours)
  for ax in axes.flat[len(found):]:
    ax.set_visible(False)
  handles = {}  # every run has a bar in its test split's panel
  for ax in axes.flat:
    for handle, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, handle)
  fig.legend(handles.values(), handles.keys(), loc='outside lower center', ncol=columns,
             fontsize=11)
  fig.suptitle('Run comparison (whiskers: 95% bootstrap intervals)', fontsize=13)
  fig.savefig(path, dpi=DPI)
  plt.close(fig)


def write_comparison(workdirs, out_dir, tta: str = 'none') -> list[dict]:
  """Writes comparison.md and comparison.png into `out_dir`; returns the rows. `tta` picks
  evaluate.py's results of that mode for every run (see the module docstring)."""
  if not workdirs:
    raise CompareError('No runs to compare; pass one or more workdirs.')
  seen = {}
  for w in workdirs:  # the same run twice (W and ./W, or a symlink) would only double its row
    resolved = pathlib.Path(w).expanduser().resolve()
    if resolved in seen:
      raise CompareError(f'{w} and {seen[resolved]} are the same run; pass each run once.')
    seen[resolved] = w
  runs = [read_run(w, tta) for w in workdirs]
  names = [run['name'] for run in runs]
  if len(set(names)) < len(names):  # runs/a/w and runs/b/w: tell them apart by their paths
    for run in runs:
      run['name'] = run['workdir']
  out_dir = pathlib.Path(out_dir).expanduser()
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / 'comparison.md').write_text(markdown(runs))
  plot(runs, out_dir / 'comparison.png')
  return runs

"""External sets never share a result folder, and compare.py ranks only runs that sat one exam.

The evaluations run in-process on a copy of the shared tiny run; the comparisons read runs made of
the json files a finished run leaves (config.json, report/metrics.json, eval/*/metrics.json).
"""

import dataclasses
import json

import pytest
from PIL import Image

from skinjax.data import datasets
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import compare
from skinjax.evaluation import eval_folders
from skinjax.evaluation import inference
from skinjax.evaluation import run_queue
from tests.test_evaluation_scripts import markdown_tables
from tests.test_external import write_ham_csv, write_jpegs


@pytest.mark.parametrize('images, labels, name', [
    ('derm7pt_dev/images', 'derm7pt_dev/labels.csv', 'derm7pt_dev'),
    ('isic2018_test_dev/images', 'isic2018_test_dev/ISIC2018_Task3_Test_GroundTruth.csv',
     'isic2018_test_dev'),
    ('ham10000', 'ham10000/HAM10000_metadata.csv', 'ham10000'),
    ('isic2019/ISIC_2019_Training_Input/part1', 'isic2019/truth.csv', 'isic2019'),
    ('photos/clinic a', 'truths/labels.csv', 'clinic_a'),  # apart: the images' folder
    ('derm7pt_dev/images/../images', 'derm7pt_dev/./labels.csv', 'derm7pt_dev'),
])
def test_a_set_is_named_by_the_folder_it_came_from(tmp_path, images, labels, name):
  assert eval_folders.external_set_name(tmp_path / images, tmp_path / labels) == name


def test_the_set_hash_names_the_content_in_any_row_order():
  ids, names = ['a', 'b', 'c'], ['mel', 'nv', 'nv']
  digest = eval_folders.set_hash(ids, names)
  assert len(digest) == 8 and int(digest, 16) >= 0
  assert eval_folders.set_hash(ids[::-1], names[::-1]) == digest
  assert eval_folders.set_hash(ids, ['mel', 'nv', 'bcc']) != digest
  assert eval_folders.set_hash(ids[:2], names[:2]) != digest
  assert eval_folders.set_hash(ids, names, groups=['L1', 'L1', 'L2']) != digest
  assert eval_folders.set_hash(ids, names, score_weights=[1.0, 1.0, 0.0]) != digest
  # Weights of 1 still say the rows are ISIC ground truth, scored by the official rules.
  assert eval_folders.set_hash(ids, names, score_weights=[1.0, 1.0, 1.0]) != digest


def write_set(folder, ids, seed):
  """An external set laid out as Derm7pt's: <folder>/images/ and <folder>/labels.csv."""
  dx = [CLASS_NAMES[i % 7] for i in range(len(ids))]
  write_jpegs(folder / 'images', ids, seed=seed)
  write_ham_csv(folder / 'labels.csv', ids, dx)
  return folder / 'images', folder / 'labels.csv'


@pytest.fixture
def two_sets(tmp_path):
  """Two sets whose label files are both called labels.csv, of 7 and 5 images."""
  return (write_set(tmp_path / 'clinic_a', [f'A_{i}' for i in range(7)], seed=1),
          write_set(tmp_path / 'clinic_b', [f'B_{i}' for i in range(5)], seed=2))


def test_sets_with_one_csv_name_get_their_own_folders_and_are_compared_apart(copy_of_tiny_run,
                                                                              two_sets, tmp_path):
  run = inference.load_run(copy_of_tiny_run, 'best')
  written = {}
  for images, labels in two_sets:
    data = checkpoint_eval.external_set(images, labels, run)
    out = checkpoint_eval.default_out_dir(run, data, 'none')
    checkpoint_eval.evaluate_checkpoint(run, data, out)
    written[images.parent.name] = out
  assert written['clinic_a'] != written['clinic_b']
  for name, n in (('clinic_a', 7), ('clinic_b', 5)):
    assert written[name].parent == copy_of_tiny_run / 'eval'
    assert written[name].name.startswith(f'external-{name}-')
    metrics = json.loads((written[name] / 'metrics.json').read_text())
    assert (metrics['set_name'], metrics['num_examples']) == (name, n)
    assert written[name].name == f"external-{name}-{metrics['set_hash']}-best"
  [row] = compare.write_comparison([copy_of_tiny_run], tmp_path / 'comparison')
  assert sorted((s['set_name'], s['num_examples']) for s in row['external'].values()) == [
      ('clinic_a', 7), ('clinic_b', 5)]
  text = (tmp_path / 'comparison' / 'comparison.md').read_text()
  assert '## External test set: clinic_a' in text and '## External test set: clinic_b' in text


def snapshot(folder):
  return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_a_folder_holding_another_set_is_refused_before_predicting(copy_of_tiny_run, two_sets,
                                                                  tmp_path, monkeypatch):
  run = inference.load_run(copy_of_tiny_run, 'best')
  (a_images, a_labels), (b_images, b_labels) = two_sets
  set_a = checkpoint_eval.external_set(a_images, a_labels, run)
  out = tmp_path / 'out'
  checkpoint_eval.evaluate_checkpoint(run, set_a, out)
  before = snapshot(out)

  def no_prediction(*args, **kwargs):
    raise AssertionError('predicted although the folder was refused')

  monkeypatch.setattr(inference, 'predict_source', no_prediction)
  set_b = checkpoint_eval.external_set(b_images, b_labels, run)
  with pytest.raises(ValueError) as refused:
    checkpoint_eval.evaluate_checkpoint(run, set_b, out)
  message = str(refused.value)
  assert message == (
      f"--out {out} already holds the results of the external set clinic_a (set hash "
      f"{set_a.description['set_hash']}), not of the external set clinic_b (set hash "
      f"{set_b.description['set_hash']}); pass another --out (or delete that folder to replace "
      'them).')
  with pytest.raises(ValueError, match=r'results of the external set clinic_a .*not of the test '
                                       r'split of synthetic; pass another --out'):
    checkpoint_eval.evaluate_checkpoint(run, checkpoint_eval.run_split(run, 'test'), out)
  # The trainer's report is no evaluation of any set: evaluate.py may not write over it.
  with pytest.raises(ValueError, match='holds a report that evaluate.py did not write; pass '
                                       'another --out'):
    checkpoint_eval.evaluate_checkpoint(run, checkpoint_eval.run_split(run, 'test'),
                                        copy_of_tiny_run / 'report')
  assert snapshot(out) == before
  # The same set again rewrites its own folder.
  monkeypatch.undo()
  metrics = checkpoint_eval.evaluate_checkpoint(run, set_a, out, bootstrap_seed=1)
  assert json.loads((out / 'metrics.json').read_text())['ci'] == metrics['ci']


# ------------------------------------------------------------------ compare, from json files


def description(name, class_names=CLASS_NAMES):
  return dataclasses.replace(datasets.HAM10000, name=name, class_names=tuple(class_names),
                             challenge=None)


def scores(balanced_accuracy, n=100, **extra):
  interval = [balanced_accuracy - 0.05, balanced_accuracy + 0.05]
  return {'num_examples': n, 'accuracy': balanced_accuracy,
          'balanced_accuracy': balanced_accuracy, 'macro_f1': balanced_accuracy - 0.1,
          'melanoma_recall': 0.5, 'macro_auc': 0.9,
          'ci': {'balanced_accuracy': interval, 'macro_f1': interval, 'melanoma_recall': interval,
                 'macro_auc': interval, 'unit': 'lesion'}, **extra}


def write_json(path, content):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(content))


def finished_run(folder, dataset, balanced_accuracy, external=()):
  """A run as compare.py reads it; `external`: (eval folder name, its metrics.json) pairs."""
  write_json(folder / 'config.json', {'dataset_description': dataset.to_json(),
                                      'model': {'arch': 'resnet50', 'init': 'imagenet'},
                                      'data': {'image_size': 224}})
  write_json(folder / 'report' / 'metrics.json',
             scores(balanced_accuracy, arch='resnet50', init='imagenet', num_params=2e7,
                    image_size=224, epochs_run=3, train_time_s=60.0))
  for name, metrics in external:
    write_json(folder / 'eval' / name / 'metrics.json', metrics)
  return folder


def external_scores(balanced_accuracy, set_name, n, digest='0123abcd'):
  return scores(balanced_accuracy, n, split='external', set_name=set_name, set_hash=digest,
                checkpoint='best')


DERM7PT = external_scores(0.4, 'derm7pt_dev', 297, '5ca1ab1e')


@pytest.fixture
def three_datasets(tmp_path):
  """A demo run with the highest figure of all, two HAM10000 runs and a Derm7pt one."""
  derm7pt = description('derm7pt', [c for c in CLASS_NAMES if c != 'akiec'])
  return [
      finished_run(tmp_path / 'demo', description('demo'), 0.95),
      finished_run(tmp_path / 'ham_a', description('ham10000'), 0.70,
                   [('external-derm7pt_dev-5ca1ab1e-best', DERM7PT),
                    ('external-isic2018_test_dev-0badf00d-best',
                     external_scores(0.6, 'isic2018_test_dev', 453, '0badf00d'))]),
      finished_run(tmp_path / 'ham_b', description('ham10000'), 0.55,
                   [('external-derm7pt_dev-5ca1ab1e-best',
                     external_scores(0.5, 'derm7pt_dev', 297, '5ca1ab1e'))]),
      finished_run(tmp_path / 'derm', derm7pt, 0.80,
                   [('external-derm7pt_dev-5ca1ab1e-best',
                     external_scores(0.9, 'derm7pt_dev', 297, '5ca1ab1e'))]),
  ]


def comparison_text(workdirs, path):
  """comparison.md without the figure, which the last test looks at."""
  path.write_text(compare.markdown([compare.read_run(w) for w in workdirs]))
  return path.read_text()


def test_compare_states_the_groups_first_and_ranks_only_within_one(three_datasets, tmp_path):
  text = comparison_text(three_datasets, tmp_path / 'comparison.md')
  lines = text.splitlines()
  first_table = next(i for i, line in enumerate(lines) if line.startswith('| '))
  heading = '\n'.join(lines[:first_table])
  assert 'Not comparable across datasets' in heading
  for group in ('- trained on demo: demo', '- trained on ham10000: ham_a, ham_b',
                '- trained on derm7pt: derm', '- derm7pt_dev: scored for ham_a, ham_b, derm',
                '- isic2018_test_dev: scored for ham_a'):
    assert group in heading, group
  # One table per training dataset on its test split, and on each external set; every table
  # holds the runs of one dataset only.
  datasets_of = {'demo': 'demo', 'ham_a': 'ham10000', 'ham_b': 'ham10000', 'derm': 'derm7pt'}
  tables = markdown_tables(tmp_path / 'comparison.md')
  assert [list(table) for table in tables] == [['demo'], ['ham_a', 'ham_b'], ['derm'],
                                               ['ham_a', 'ham_b'], ['derm'], ['ham_a', 'ham_b']]
  assert all(len({datasets_of[run] for run in table}) == 1 for table in tables)
  verdicts = [line for line in lines if line.startswith('Highest balanced accuracy')]
  assert verdicts == ['Highest balanced accuracy: ham_a (resnet50, imagenet).',
                      'Highest balanced accuracy: ham_b (resnet50, imagenet); its interval '
                      'overlaps those of ham_a.']
  assert 'Only demo has a balanced accuracy here: nothing to rank.' in lines
  assert 'Only derm has a balanced accuracy here: nothing to rank.' in lines
  assert text.count('## External test set: derm7pt_dev') == 1
  assert '### Runs trained on ham10000' in text and '### Runs trained on derm7pt' in text


def test_compare_reads_folders_named_before_sets_were_hashed(tmp_path):
  old = {**scores(0.5, 59), 'split': 'external', 'checkpoint': 'best',
         'images_dir': '/data/derm7pt_dev/images', 'labels_csv': '/data/derm7pt_dev/labels.csv'}
  older = {**scores(0.6, 14), 'split': 'external', 'checkpoint': 'best'}
  run = finished_run(tmp_path / 'run', description('ham10000'), 0.7, [
      ('external-labels-best', old), ('external-ISIC2018_Task3_Test_GroundTruth-best', older),
      ('external-derm7pt_dev-5ca1ab1e-best', DERM7PT)])
  [row] = [compare.read_run(run)]
  assert {key: (s['set_name'], s['num_examples']) for key, s in row['external'].items()} == {
      'external-derm7pt_dev-labels_labels': ('derm7pt_dev', 59),
      'external-ISIC2018_Task3_Test_GroundTruth-labels_ISIC2018_Task3_Test_GroundTruth': (
          'ISIC2018_Task3_Test_GroundTruth', 14),
      'external-derm7pt_dev-5ca1ab1e': ('derm7pt_dev', 297)}
  text = comparison_text([run], tmp_path / 'comparison.md')
  # Two sets of one name, told apart.
  assert '## External test set: derm7pt_dev (labels labels.csv)' in text
  assert '## External test set: derm7pt_dev (set hash 5ca1ab1e)' in text
  assert '(W/eval/external-labels-best/)' in text


def test_the_figure_wraps_panels_into_rows_at_most_1600_px_wide(three_datasets, tmp_path):
  runs = [compare.read_run(w) for w in three_datasets]
  assert [title for title, _ in compare.panels(runs)] == [
      'test split of demo', 'test split of ham10000', 'test split of derm7pt',
      'derm7pt_dev (trained on ham10000)', 'derm7pt_dev (trained on derm7pt)',
      'isic2018_test_dev (trained on ham10000)']
  compare.write_comparison(three_datasets, tmp_path)
  with Image.open(tmp_path / 'comparison.png') as figure:
    width, height = figure.size
  assert width == 1600 and 3 * 450 <= height <= 3 * 450 + 200  # six panels: three rows of two


def test_the_study_counts_a_set_scored_before_by_its_files(tmp_path):
  images, labels = tmp_path / 'derm7pt_dev' / 'images', tmp_path / 'derm7pt_dev' / 'labels.csv'
  recorded = {'images_dir': str(images), 'labels_csv': str(labels)}
  workdir = tmp_path / 'run'
  assert not run_queue.scored_before(workdir, 'none', images, labels)
  write_json(workdir / 'eval' / 'external-labels-best-tta_flip' / 'metrics.json', recorded)
  write_json(workdir / 'eval' / 'external-derm7pt_dev-0badf00d-best' / 'metrics.json',
             {**recorded, 'labels_csv': str(tmp_path / 'other.csv')})
  assert not run_queue.scored_before(workdir, 'none', images, labels)
  assert run_queue.scored_before(workdir, 'flip', images, labels)  # an older folder
  write_json(workdir / 'eval' / 'external-derm7pt_dev-5ca1ab1e-best' / 'metrics.json', recorded)
  assert run_queue.scored_before(workdir, 'none', images, labels)
  assert not run_queue.scored_before(workdir, 'none')  # the test split, not scored


def test_a_run_split_another_way_sat_another_exam(tmp_path):
  """The study's per-image split of HAM10000 leaks lesions into its test split: a run of it is
  grouped apart from the lesion-grouped runs and never ranked against them."""
  grouped = finished_run(tmp_path / 'grouped', description('ham10000'), 0.70)
  leaky = finished_run(tmp_path / 'leaky', description('ham10000'), 0.78)
  config = json.loads((leaky / 'config.json').read_text())
  config['data'].update(split='random_image', split_seed=0, split_fractions=[0.6, 0.2, 0.2])
  write_json(leaky / 'config.json', config)
  text = comparison_text([grouped, leaky], tmp_path / 'comparison.md')
  assert '- trained on ham10000: grouped' in text
  assert '- trained on ham10000 (random_image split 0.6/0.2/0.2, seed 0): leaky' in text
  assert not any(line.startswith('Highest balanced accuracy') for line in text.splitlines())

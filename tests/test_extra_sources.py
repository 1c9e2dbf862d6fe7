"""Training on several datasets: a HAM10000-shaped main dataset plus an ISIC-2019-shaped extra.

Both are prepared from fake downloads in the real layouts (tests/ham_fixtures.py,
tests/dataset_fixtures.py) by the code users run. The main dataset's splits must stay what they are
without extras, image for image; the extra's classes map by name (AK is AKIEC) or by
config.data.label_map; its groups never cross train and val; a run records every source's
fingerprint, resumes with them and refuses another set of them; bad input is one line and writes
nothing.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from skinjax.data import combined
from skinjax.data import formats
from skinjax.data import handle
from skinjax.data import pipeline
from skinjax.data import prepared
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import inference
from skinjax.export import model_card
from skinjax.training import config_checks
from skinjax.training import train
from skinjax.training import workdir as workdir_lib
from tests import dataset_fixtures as fx
from tests import ham_fixtures
from tests.helpers import tiny_config

SHORT_SIDE = 32
EXTRA = 'isic2019_extra'
SHARED = 'shares_ham_ids'  # an extra dataset holding three of the main dataset's images
HAM_CLASSES = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')


def _rename_images(download, renames: dict[str, str]):
  """The same ISIC 2019 download with some images under other ids (in both CSVs and on disk)."""
  for name in ('ISIC_2019_Training_GroundTruth.csv', 'ISIC_2019_Training_Metadata.csv'):
    path = download / name
    with open(path, newline='') as f:
      rows = list(csv.DictReader(f))
    for row in rows:
      row['image'] = renames.get(row['image'], row['image'])
    with open(path, 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)
  images = download / 'ISIC_2019_Training_Input'
  for old, new in renames.items():
    os.replace(images / f'{old}.jpg', images / f'{new}.jpg')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('sources')
  data_dir = root / 'tfds'
  ham_download = ham_fixtures.make_kaggle_folder(root / 'ham', num_lesions=42)
  prepared.prepare('ham10000', ham_download, data_dir, options=formats.Options(name='ham10000'),
                   short_side=SHORT_SIDE)
  extra_download = fx.write_isic2019(root / 'isic2019', lesions_per_class=5, seed=3)
  prepared.prepare('isic2019', extra_download, data_dir, options=formats.Options(name=EXTRA),
                   short_side=SHORT_SIDE)
  shared_download = fx.write_isic2019(root / 'shared', lesions_per_class=3, seed=4)
  ham_ids = handle.PreparedDataset(data_dir, 'ham10000', SHORT_SIDE).metadata['image_id'][:3]
  with open(shared_download / 'ISIC_2019_Training_GroundTruth.csv', newline='') as f:
    first = [row['image'] for row in csv.DictReader(f)][:3]
  _rename_images(shared_download, dict(zip(first, ham_ids)))
  prepared.prepare('isic2019', shared_download, data_dir, options=formats.Options(name=SHARED),
                   short_side=SHORT_SIDE)
  return data_dir


def config_for(data_dir, *extra_train, **data_overrides):
  config = tiny_config(**{'data.source': 'prepared', 'data.dataset': 'ham10000',
                          'data.data_dir': str(data_dir), 'data.prepared_size': SHORT_SIDE,
                          'data.extra_train': extra_train, 'train.num_epochs': 1,
                          'data.num_workers': 0})
  for key, value in data_overrides.items():
    config.data[key] = value
  return config


def open_dataset(config):
  return handle.PreparedDataset.open(config)


SCC_TO_AKIEC = {'label_map': {'scc': 'akiec'}}


def test_the_main_splits_stay_image_for_image_and_extras_join_train_and_val(data_dir):
  main = open_dataset(config_for(data_dir))
  both = open_dataset(config_for(data_dir, EXTRA, extra_val_fraction=0.3, **SCC_TO_AKIEC))
  assert isinstance(both, combined.CombinedDataset)
  n = main.num_examples
  assert np.array_equal(both.splits['test'], main.splits['test'])  # no extra image is tested
  for split in ('train', 'val'):
    assert np.array_equal(both.splits[split][both.splits[split] < n], main.splits[split])
  for key in ('image_id', 'group', 'label'):
    assert np.array_equal(both.metadata[key][:n], main.metadata[key])
  extra = handle.PreparedDataset(data_dir, EXTRA, SHORT_SIDE)
  train_extra, val_extra = (both.splits[s][both.splits[s] >= n] - n for s in ('train', 'val'))
  # Every extra image in exactly one of train and val, none in two, and both non-empty.
  assert sorted(np.concatenate([train_extra, val_extra])) == list(range(extra.num_examples))
  assert len(val_extra) and len(train_extra)
  groups = extra.metadata['group']
  assert not set(groups[train_extra]) & set(groups[val_extra])
  assert 0.15 < len(val_extra) / extra.num_examples < 0.45
  # The union's records carry the main dataset's labels.
  for index in (both.splits['train'][0], n + train_extra[0], n + val_extra[-1]):
    assert both.source[index]['label'] == both.metadata['label'][index]
    assert both.metadata['dx'][index] == HAM_CLASSES[both.metadata['label'][index]]
  assert both.description == main.description
  # Without extra validation, every extra image trains.
  all_train = open_dataset(config_for(data_dir, EXTRA, **SCC_TO_AKIEC))
  assert np.array_equal(all_train.splits['val'], main.splits['val'])
  assert len(all_train.splits['train']) == len(main.splits['train']) + extra.num_examples


def test_classes_map_by_name_and_by_label_map(data_dir):
  extra = handle.PreparedDataset(data_dir, EXTRA, SHORT_SIDE)
  n_main = open_dataset(config_for(data_dir)).num_examples
  own_names = np.asarray(extra.description.class_names)[extra.metadata['label']]
  dataset = open_dataset(config_for(data_dir, EXTRA, **SCC_TO_AKIEC))
  (mapping,) = [e.class_map for e in dataset.extras]
  assert mapping == {'mel': 'mel', 'nv': 'nv', 'bcc': 'bcc', 'ak': 'akiec', 'bkl': 'bkl',
                     'df': 'df', 'vasc': 'vasc', 'scc': 'akiec'}
  expected = [HAM_CLASSES.index(mapping[name]) for name in own_names]
  assert dataset.metadata['label'][n_main:].tolist() == expected
  # '' leaves a class out: its images are in no split, and the rest are all in one.
  dropped = open_dataset(config_for(data_dir, EXTRA, label_map={'SCC': '', 'df': 'bkl'}))
  in_splits = np.concatenate(list(dropped.splits.values()))
  extra_in_splits = np.sort(in_splits[in_splits >= n_main]) - n_main
  assert extra_in_splits.tolist() == np.flatnonzero(own_names != 'scc').tolist()
  assert dropped.extras[0].class_map['df'] == 'bkl'
  assert HAM_CLASSES.index('bkl') in dropped.metadata['label'][n_main:][own_names == 'df']
  (line,) = dropped.sources_summary()
  assert 'scc left out' in line and 'ak->akiec' in line and 'df->bkl' in line


def test_extra_images_already_in_the_main_dataset_are_left_out(data_dir):
  main = open_dataset(config_for(data_dir))
  dataset = open_dataset(config_for(data_dir, SHARED, **SCC_TO_AKIEC))
  extra_ids = dataset.metadata['image_id'][main.num_examples:]
  in_main = np.isin(extra_ids, main.metadata['image_id'])
  assert in_main.sum() == 3
  used = np.concatenate(list(dataset.splits.values()))
  assert not np.isin(np.flatnonzero(in_main) + main.num_examples, used).any()
  assert '3 also in ham10000 left out' in dataset.sources_summary()[0]


def test_balanced_sampling_counts_classes_over_the_union_and_source_weights_scale_draws(data_dir):
  dataset = open_dataset(config_for(data_dir, EXTRA, source_weights=(1.0, 3.0), **SCC_TO_AKIEC))
  indices = dataset.splits['train']
  labels, sources = dataset.metadata['label'][indices], dataset.metadata['source'][indices]
  weights = pipeline.draw_weights(labels, True, dataset.source_weights_of(indices))
  draws = pipeline.WeightedDraws(indices, weights, seed=0, num_epochs=200)
  drawn = np.array([draws[i] for i in range(len(draws))])
  drawn_labels = dataset.metadata['label'][drawn]
  drawn_sources = dataset.metadata['source'][drawn]
  for label in range(len(HAM_CLASSES)):
    # Within each class, an extra image is drawn three times as often as a main one.
    per_image = [np.sum((drawn_labels == label) & (drawn_sources == s))
                 / np.sum((labels == label) & (sources == s)) for s in (0, 1)]
    assert per_image[1] / per_image[0] == pytest.approx(3.0, rel=0.15)
  # Balanced without source weights: every class of the union equally often.
  draws = pipeline.WeightedDraws(indices, pipeline.draw_weights(labels, True), seed=0,
                                 num_epochs=200)
  counts = np.bincount(dataset.metadata['label'][[draws[i] for i in range(len(draws))]])
  assert len(counts) == len(HAM_CLASSES) and counts.min() / counts.max() > 0.9
  # No source weights and no balance: the plain shuffle, as without extras.
  assert pipeline.draw_weights(labels, False, None) is None


def test_the_class_prior_of_the_stream_is_what_the_stream_draws(data_dir):
  # The prior a logit-adjusted loss offsets, against the class frequencies actually drawn.
  dataset = open_dataset(config_for(data_dir, EXTRA, source_weights=(1.0, 3.0), **SCC_TO_AKIEC))
  indices = dataset.splits['train']
  labels = dataset.metadata['label'][indices]
  num_classes = len(HAM_CLASSES)
  for balanced, source_weights in ((True, dataset.source_weights_of(indices)),
                                   (False, dataset.source_weights_of(indices)),
                                   (True, None)):
    prior = pipeline.stream_class_prior(labels, num_classes, balanced, source_weights)
    draws = pipeline.WeightedDraws(indices, pipeline.draw_weights(labels, balanced, source_weights),
                                   seed=0, num_epochs=200)
    drawn = np.bincount(dataset.metadata['label'][[draws[i] for i in range(len(draws))]],
                        minlength=num_classes)
    np.testing.assert_allclose(prior, drawn / drawn.sum(), atol=0.01)
  np.testing.assert_allclose(prior, np.full(num_classes, 1 / num_classes))
  # The plain shuffle draws every image once an epoch: the split's own frequencies.
  np.testing.assert_allclose(pipeline.stream_class_prior(labels, num_classes, False),
                             np.bincount(labels, minlength=num_classes) / len(labels))


@pytest.mark.parametrize('overrides, words', [
    ({}, ["isic2019_extra's class scc has no class in ham10000", "label_map = {'scc':"]),
    ({'label_map': {'scc': 'melanoma'}}, ["'melanoma'", 'not a class of ham10000']),
    ({'label_map': {'scc': 'akiec', 'sqc': ''}}, ["'sqc'", 'which no dataset']),
], ids=['unmapped', 'not-a-class', 'typo'])
def test_class_mapping_errors_name_the_class_and_the_fix(data_dir, overrides, words):
  with pytest.raises(combined.SourcesError) as error:
    open_dataset(config_for(data_dir, EXTRA, **overrides)).fingerprint
  for word in words:
    assert word in str(error.value)
  assert '\n' not in str(error.value)


def test_a_run_records_every_source_resumes_with_them_and_refuses_others(data_dir, tmp_path):
  workdir = tmp_path / 'run'
  config = config_for(data_dir, EXTRA, extra_val_fraction=0.25, **SCC_TO_AKIEC)
  train.train_and_evaluate(config, str(workdir))
  saved = json.loads((workdir / 'config.json').read_text())
  (recorded,) = saved['dataset']['extra_train']
  extra = handle.PreparedDataset(data_dir, EXTRA, SHORT_SIDE)
  assert recorded == {**extra.fingerprint, 'class_map': open_dataset(config).extras[0].class_map}
  assert {k: v for k, v in saved['dataset'].items() if k != 'extra_train'} == open_dataset(
      config_for(data_dir)).fingerprint
  # Resumed for a second epoch: the sources are reopened from the config and match the record.
  longer = config_for(data_dir, EXTRA, extra_val_fraction=0.25, **SCC_TO_AKIEC)
  longer.train.num_epochs, longer.train.allow_config_change = 2, True
  train.train_and_evaluate(longer, str(workdir))
  with open(workdir / 'report' / 'predictions.csv', newline='') as f:  # the main test split only
    tested = [row['image_id'] for row in csv.DictReader(f)]
  main = open_dataset(config_for(data_dir))
  assert sorted(tested) == sorted(main.metadata['image_id'][main.splits['test']])
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  steps_per_epoch = len(open_dataset(config).splits['train']) // config.train.batch_size
  steps = [r['step'] for r in records if 'step_losses' in r]
  assert steps == list(range(1, 2 * steps_per_epoch + 1))
  # Evaluation reopens the same sources: the validation split holds extra images.
  run = inference.load_run(workdir)
  val = checkpoint_eval.run_split(run, 'val')
  assert np.any(val.indices >= open_dataset(config_for(data_dir)).num_examples)
  # ...and refuses extra datasets other than the recorded ones (here: other labels, as recorded).
  altered = shutil.copytree(workdir, tmp_path / 'altered')
  saved['dataset']['extra_train'][0]['metadata_sha256'] = '0' * 64
  (altered / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(inference.RunInputError, match='not those the run recorded'):
    checkpoint_eval.run_split(inference.load_run(altered), 'test')
  # An exported model's card names every training source and its licence.
  card = model_card.card(run, onnx_file='model.onnx', opset=17, portable_note='')
  assert [(e['name'], e['licence']) for e in card['extra_train']] == [
      (EXTRA, model_card.DATA_LICENCES['isic2019'])]
  assert card['extra_train'][0]['class_map']['scc'] == 'akiec'
  assert f"Also trained on {EXTRA}; data licence: CC BY-NC 4.0" in model_card.markdown(card)
  # Another set of sources: one line, even with allow_config_change, and nothing written.
  before = {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()}
  for other in (config_for(data_dir), config_for(data_dir, SHARED, **SCC_TO_AKIEC)):
    other.train.num_epochs, other.train.allow_config_change = 3, True
    with pytest.raises(workdir_lib.WorkdirError) as error:
      train.train_and_evaluate(other, str(workdir))
    assert 'cannot change its sources' in str(error.value) and '\n' not in str(error.value)
  assert {p: p.read_bytes() for p in workdir.rglob('*') if p.is_file()} == before


@pytest.mark.parametrize('overrides, error, words', [
    ({'extra_train': ('not_prepared',)}, combined.SourcesError,
     ["'not_prepared'", 'not prepared', 'scripts/prepare_dataset.py --name=not_prepared']),
    ({'extra_train': (EXTRA,)}, combined.SourcesError, ['scc', 'label_map']),
    ({'extra_train': (EXTRA,), 'source_weights': (1.0, 0.0), **SCC_TO_AKIEC}, ValueError,
     ['source_weights', 'positive']),
    ({'extra_train': (EXTRA,), 'source_weights': (1.0,), **SCC_TO_AKIEC}, ValueError,
     ['source_weights', '1 weights for 2 sources']),
    ({'extra_train': (EXTRA, 'ham10000'), **SCC_TO_AKIEC}, combined.SourcesError,
     ['ham10000', 'twice']),
    ({'extra_train': (EXTRA,), 'extra_val_fraction': 1.0, **SCC_TO_AKIEC}, ValueError,
     ['extra_val_fraction']),
], ids=['not-prepared', 'unmapped-class', 'weight-zero', 'weights-count', 'main-again',
        'all-to-val'])
def test_bad_sources_are_one_line_and_write_nothing(data_dir, tmp_path, overrides, error, words):
  config = config_for(data_dir)
  for key, value in overrides.items():
    config.data[key] = value
  with pytest.raises(error) as raised:
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  for word in words:
    assert word in str(raised.value)
  assert '\n' not in str(raised.value)
  assert not (tmp_path / 'run').exists()


def test_the_cli_says_one_line_for_an_unprepared_extra(data_dir, tmp_path, python):
  workdir = tmp_path / 'run'
  result = python.run(['-m', 'skinjax.main', '--config=configs/demo.py',
                       '--config.data.source=prepared', f'--config.data.data_dir={data_dir}',
                       f'--config.data.prepared_size={SHORT_SIDE}',
                       "--config.data.extra_train=('isic2019_bcn_msk',)", f'--workdir={workdir}'])
  assert result.returncode == 1
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith("error: config.data.extra_train names 'isic2019_bcn_msk', which is "
                              'not prepared'), result.stderr
  assert 'Traceback' not in result.stderr and not workdir.exists()


def test_source_keys_without_extras_are_a_warning_not_a_stop(data_dir):
  """A recipe's no-extras ablation (extra_train=()) keeps its label_map and weights: one line."""
  config = config_for(data_dir, source_weights=(1.0, 0.5), **SCC_TO_AKIEC)
  config_checks.validate(config)
  (line,) = config_checks.config_warnings(config)
  assert line.startswith('warning: config.data.label_map, source_weights set, but ')
  assert config_checks.config_warnings(config_for(data_dir, EXTRA, **SCC_TO_AKIEC)) == []

"""Patient metadata beside the image (config.model.metadata): the encoding, the fused model, and a
metadata run trained, resumed, evaluated and predicted; image-only runs stay as they were."""

import csv
import dataclasses
import json
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from skinjax.data import datasets
from skinjax.data import handle
from skinjax.data import patient_metadata as pm
from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import inference
from skinjax.export import onnx_file
from skinjax.models import classifier
from skinjax.models import run_model as run_model_lib
from skinjax.training import config_checks
from skinjax.training import optim
from skinjax.training import train
from tests.helpers import tiny_config, unpack_golden
from tests.test_evaluation_scripts import read_predictions, script
from tests.test_train import assert_same_run, interrupt_after_checkpoint

HAM10000_DIR = os.environ.get('SKINJAX_HAM10000_DIR')
ISIC2019_DIR = os.environ.get('SKINJAX_ISIC2019_BCN_MSK_DIR')
FIELDS = ('age', 'sex', 'site')
ENCODER = pm.MetadataEncoder(FIELDS)
SITE = {site: i for i, site in enumerate(pm.SITES)}


def expected(age, sex, site):
  """The encoding written out by hand: age/100 and its unknown flag, then two one-hots whose
  last entry is unknown."""
  vector = np.zeros(2 + 3 + len(pm.SITES) + 1, np.float32)
  vector[:2] = (0.0, 1.0) if age is None else (age / 100, 0.0)
  vector[2 + {'male': 0, 'female': 1, None: 2}[sex]] = 1.0
  vector[5 + (len(pm.SITES) if site is None else SITE[site])] = 1.0
  return vector


# ------------------------------------------------------------------------------ encoding


@pytest.mark.parametrize('row', [
    {'age': '45.0', 'sex': 'male', 'localization': 'back'},  # HAM10000
    {'age_approx': '45', 'sex': 'male', 'anatom_site_general': 'posterior torso'},  # ISIC 2019
    {'age_approx': b'45', 'sex': b'male', 'anatom_site_general': b'posterior torso'},  # TFDS text
    {'age_approx': '45', 'sex': 'M', 'anatom_site_general_challenge': 'posterior torso'},
    {'Age': ' 45 ', 'SEX': 'Male', 'anatom site general': 'Posterior Torso', 'dx': 'nv'},
], ids=['ham10000', 'isic2019', 'tfds_bytes', 'isic2020', 'other_spellings'])
def test_every_dataset_spelling_encodes_alike(row):
  np.testing.assert_array_equal(ENCODER.encode(row), expected(45, 'male', 'posterior torso'))


@pytest.mark.parametrize('row, age, sex, site', [
    ({}, None, None, None),
    (None, None, None, None),
    ({'age': '', 'sex': 'unknown', 'localization': 'unknown'}, None, None, None),
    ({'age': 'NaN', 'sex': '', 'localization': ''}, None, None, None),
    ({'age': 'about fifty', 'sex': 'other', 'localization': 'elbow'}, None, None, None),
    ({'age': '200', 'sex': 'female', 'localization': 'face'}, None, 'female', 'head/neck'),
    ({'age': '0.0', 'localization': 'acral'}, 0, None, 'palms/soles'),
    ({'age_approx': '85', 'anatom_site_general': 'oral/genital'}, 85, None, 'oral/genital'),
    ({'age': '30', 'localization': 'trunk'}, 30, None, 'torso'),
], ids=['empty', 'none', 'unknown_words', 'nan', 'unseen_values', 'age_out_of_range', 'age_zero',
        'isic_sites', 'ham_trunk'])
def test_unknown_missing_and_unseen_values_encode_as_unknown(row, age, sex, site):
  np.testing.assert_array_equal(ENCODER.encode(row), expected(age, sex, site))


def test_fields_are_encoded_in_the_order_asked():
  row = {'age': '50', 'sex': 'female', 'localization': 'hand'}
  full = expected(50, 'female', 'upper extremity')
  np.testing.assert_array_equal(pm.MetadataEncoder(('site',)).encode(row), full[5:])
  np.testing.assert_array_equal(pm.MetadataEncoder(('sex', 'age')).encode(row),
                                np.concatenate([full[2:5], full[:2]]))
  assert pm.MetadataEncoder(('sex', 'age')).size == 5 and ENCODER.size == 15


def test_metadata_dropout_hides_whole_fields_as_configured_and_is_seeded():
  row = {'age': '50', 'sex': 'female', 'localization': 'hand'}
  unknown = ENCODER.unknown()
  widths = [(0, 2), (2, 5), (5, 15)]
  draws = np.stack([ENCODER.encode(row, np.random.default_rng((3, i)), 0.3) for i in range(4000)])
  again = np.stack([ENCODER.encode(row, np.random.default_rng((3, i)), 0.3) for i in range(4000)])
  np.testing.assert_array_equal(draws, again)
  # Each field is either the row's or all unknown: never a blend.
  full = ENCODER.encode(row)
  hidden = np.stack([[np.array_equal(d[a:b], unknown[a:b]) for a, b in widths] for d in draws])
  for (a, b), column in zip(widths, hidden.T):
    np.testing.assert_array_equal(draws[~column, a:b], np.broadcast_to(full[a:b], (sum(~column), b - a)))
  # All hidden with p + (1 - p) p^3 = 0.319; each field with p + (1 - p) p = 0.51.
  assert hidden.all(axis=1).mean() == pytest.approx(0.3 + 0.7 * 0.3 ** 3, abs=0.03)
  np.testing.assert_allclose(hidden.mean(axis=0), 0.3 + 0.7 * 0.3, atol=0.03)
  np.testing.assert_array_equal(ENCODER.encode(row, np.random.default_rng(0), 0.0), full)


def test_the_start_of_a_run_says_where_each_field_comes_from_and_warns_of_an_empty_one():
  records = [{'metadata': {'age': '50', 'sex': '', 'localization': loc}} for loc in ('back', '')]
  shares = pm.known_shares(ENCODER, records)
  assert shares == {'age': 1.0, 'sex': 0.0, 'site': 0.5}
  assert pm.summary(FIELDS, [datasets.SYNTHETIC], shares, 2) == [
      'Patient metadata: synthetic (age <- age, sex <- sex, site <- localization); known in 2 '
      'sampled training images: age 100%, sex 0%, site 50%.',
      'warning: no sampled training image has a known sex: the model cannot learn from it; check '
      'the column in the prepared dataset, or leave the field out of config.model.metadata.']


def test_the_real_ham10000_columns_are_all_read():
  if not HAM10000_DIR:
    pytest.skip('set SKINJAX_HAM10000_DIR to the HAM10000 Kaggle folder (.ci/run sets it)')
  with open(pathlib.Path(HAM10000_DIR) / 'HAM10000_metadata.csv') as f:
    rows = list(csv.DictReader(f))
  assert pm.missing_fields(FIELDS, list(rows[0])) == []
  encoded = np.stack([ENCODER.encode(row) for row in rows])
  # Unknown exactly where HAM10000 says 'unknown' or leaves the age out: every other value,
  # all 14 localization words among them, reads as a known value.
  np.testing.assert_array_equal(encoded[:, 1] == 1, [row['age'] == '' for row in rows])
  np.testing.assert_array_equal(encoded[:, 4] == 1, [row['sex'] == 'unknown' for row in rows])
  np.testing.assert_array_equal(encoded[:, -1] == 1,
                                [row['localization'] == 'unknown' for row in rows])
  assert len({row['localization'] for row in rows}) == 15


def test_the_real_isic2019_metadata_is_all_read():
  if not ISIC2019_DIR:
    pytest.skip('set SKINJAX_ISIC2019_BCN_MSK_DIR to the ISIC 2019 BCN/MSK folder (.ci/run sets it)')
  with open(pathlib.Path(ISIC2019_DIR) / 'ISIC_2019_Training_Metadata.csv') as f:
    rows = list(csv.DictReader(f))
  encoded = np.stack([ENCODER.encode(row) for row in rows])
  np.testing.assert_array_equal(encoded[:, 1] == 1, [row['age_approx'] == '' for row in rows])
  np.testing.assert_array_equal(encoded[:, 4] == 1, [row['sex'] == '' for row in rows])
  np.testing.assert_array_equal(encoded[:, -1] == 1,
                                [row['anatom_site_general'] == '' for row in rows])


def test_ham10000_prepared_by_the_earlier_builder_gives_its_metadata(tmp_path):
  """That builder kept age (float32, NaN when unknown), sex and localization beside the image
  instead of in a `metadata` feature; such folders still train, so their metadata must be read."""
  root = unpack_golden('prepared_by_earlier_code.tar.gz', tmp_path)
  dataset = handle.PreparedDataset(root / 'prepared', 'ham10000', 16)
  records = [dataset.source[i] for i in range(len(dataset.source))]
  assert 'metadata' not in records[0] and np.isnan([r['age'] for r in records]).any()
  for record in records:
    age = None if np.isnan(record['age']) else float(record['age'])
    sex = record['sex'].decode()
    site = pm.site_of(record['localization'].decode())
    np.testing.assert_allclose(ENCODER.encode(pm.of_record(record)),
                               expected(age, sex if sex in pm.SEXES else None, site), atol=1e-7)


# --------------------------------------------------------------------------------- model


def test_an_image_only_model_keeps_exactly_its_parameters():
  """What lets every checkpoint saved before metadata existed restore unchanged."""
  image_only = run_model_lib.RunModel(tiny_config(), 7)
  params, _ = image_only.abstract_state
  assert set(params) == {'backbone', 'head'} and image_only.metadata_encoder is None
  fused = run_model_lib.RunModel(tiny_config(**{'model.metadata': FIELDS}), 7)
  fused_params, _ = fused.abstract_state
  assert set(fused_params) == {'backbone', 'head', 'metadata_branch'}
  assert fused_params['metadata_branch']['kernel'].shape == (15, classifier.METADATA_FEATURES)
  assert fused_params['head']['kernel'].shape == (
      params['head']['kernel'].shape[0] + classifier.METADATA_FEATURES, 7)
  # The branch is new, so it trains from the first phase on, at the head's learning rate.
  plan = optim.PhasePlan.create(fused.abstract, 'all', phase_two_start=10)
  assert set(jax.tree.leaves(plan.labels['metadata_branch'])) == {optim.HEAD}


def test_the_model_refuses_a_call_without_its_metadata(loaded):
  """(That it uses them: test_evaluation_feeds_each_image_its_metadata.)"""
  model = loaded.model()
  images = jax.ShapeDtypeStruct((2, 24, 24, 3), np.float32)
  with pytest.raises(ValueError, match='takes 15 metadata values per image; it was given none'):
    jax.eval_shape(model, images)
  with pytest.raises(ValueError, match='takes 15 metadata values per image; it was given 5'):
    jax.eval_shape(model, images, jax.ShapeDtypeStruct((2, 5), np.float32))


# ---------------------------------------------------------------------------------- runs


def metadata_config(**overrides):
  return tiny_config(**{'model.metadata': FIELDS, 'train.checkpoint_every_steps': 4, **overrides})


@pytest.fixture(scope='module')
def metadata_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('metadata_run')
  return workdir, train.train_and_evaluate(metadata_config(), str(workdir))


@pytest.fixture(scope='module')
def loaded(metadata_run):
  return inference.load_run(metadata_run[0], 'best')


def test_a_metadata_run_resumes_exactly(metadata_run, tmp_path):
  """Metadata dropout is drawn in the pipeline from the example's own seed, so a rerun from a
  mid-epoch checkpoint reproduces every loss."""
  config = metadata_config()
  with pytest.MonkeyPatch.context() as patch:
    interrupt_after_checkpoint(config, tmp_path, patch, step=12)
  resumed = train.train_and_evaluate(config, str(tmp_path))
  assert_same_run(tmp_path, metadata_run[0], resumed, metadata_run[1])
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['metadata'] == list(FIELDS)


def test_evaluation_feeds_each_image_its_metadata(metadata_run, loaded, tmp_path):
  """evaluate.py on the test split reproduces the trainer's report; with the metadata hidden the
  probabilities move, so the report did use them."""
  workdir, _ = metadata_run
  _, _, report_probs = read_predictions(workdir / 'report' / 'predictions.csv')
  data = checkpoint_eval.run_split(loaded, 'test')
  probs = loaded.predict(data.source, data.indices)
  np.testing.assert_allclose(probs, report_probs, atol=2e-6)
  probs_unknown = loaded.predict(WithoutMetadata(data.source), data.indices)
  assert np.abs(probs_unknown - probs).max() > 1e-3


class WithoutMetadata:
  """A source whose records carry no metadata: what an external CSV without the columns gives."""

  def __init__(self, source):
    self.source = source

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return {**self.source[index], 'metadata': {}}


def by_hand(run, views, metadata, tta_views=(lambda x: x,)):
  """The model applied outside every pipeline: the mean softmax over `tta_views`."""
  model = run.model()
  forward = jax.jit(lambda x, m: jax.nn.softmax(model(run.normalise(x), m)))
  return np.mean([np.asarray(forward(view(np.stack(views)), np.stack(metadata)))
                  for view in tta_views], axis=0)


@pytest.fixture(scope='module')
def test_split_as_files(loaded, tmp_path_factory):
  """The run's first 12 test images as PNG files (lossless, so their views are the split's),
  with a metadata-style CSV that carries HAM10000's metadata columns."""
  folder = tmp_path_factory.mktemp('metadata_external')
  dataset = handle.PreparedDataset.open(loaded.config)
  indices = dataset.splits['test'][:12]
  (folder / 'images').mkdir()
  rows = []
  for index in indices:
    record = dataset.source[int(index)]
    image_id = str(record['image_id'])
    Image.fromarray(record['image']).save(folder / 'images' / f'{image_id}.png')
    rows.append({'image_id': image_id, 'dx': datasets.SYNTHETIC.class_names[record['label']],
                 **record['metadata']})
  for name, columns in (('with_metadata.csv', list(rows[0])), ('labels_only.csv', ['image_id', 'dx'])):
    with open(folder / name, 'w', newline='') as f:
      writer = csv.DictWriter(f, columns, extrasaction='ignore')
      writer.writeheader()
      writer.writerows(rows)
  return folder, dataset, indices, rows


def test_an_external_csv_gives_its_metadata_columns_or_unknowns_said_once(loaded, test_split_as_files):
  folder, dataset, indices, rows = test_split_as_files
  views = [loaded.eval_view(dataset.source[int(i)]['image']) for i in indices]
  with_metadata = checkpoint_eval.external_set(folder / 'images', folder / 'with_metadata.csv',
                                               loaded)
  assert with_metadata.description['warnings'] == []
  probs = loaded.predict(with_metadata.source, with_metadata.indices, tta_mode='flip')
  flips = (lambda x: x, lambda x: x[:, :, ::-1], lambda x: x[:, ::-1],
           lambda x: x[:, ::-1, ::-1])
  metadata = [ENCODER.encode(row) for row in rows]
  np.testing.assert_allclose(probs, by_hand(loaded, views, metadata, flips), atol=2e-6)

  labels_only = checkpoint_eval.external_set(folder / 'images', folder / 'labels_only.csv', loaded)
  [note] = labels_only.description['warnings']
  assert note.startswith(f"note: --labels_csv {folder / 'labels_only.csv'} has no column for age, "
                         'sex, site') and note.endswith('as unknown for every image.')
  probs = loaded.predict(labels_only.source, labels_only.indices)
  np.testing.assert_allclose(probs, by_hand(loaded, views, [ENCODER.unknown()] * len(views)),
                             atol=2e-6)


def test_predict_script_reads_metadata_and_refuses_a_csv_without_the_images(
    metadata_run, test_split_as_files, tmp_path, python):
  workdir, _ = metadata_run
  folder, _, _, rows = test_split_as_files
  images = sorted((folder / 'images').iterdir())
  metadata_csv = tmp_path / 'metadata.csv'
  with open(metadata_csv, 'w', newline='') as f:  # ISIC's column names, the image's file name
    writer = csv.writer(f)
    writer.writerow(['image', 'age_approx', 'sex', 'anatom_site_general'])
    sites = {'back': 'posterior torso', 'lower extremity': 'lower extremity', 'trunk': 'torso',
             'upper extremity': 'upper extremity', 'face': 'head/neck', 'unknown': ''}
    for row in rows:
      writer.writerow([row['image_id'] + '.png', row['age'], row['sex'],
                       sites[row['localization']]])
  result = script(python, 'predict.py', f'--workdir={workdir}', '--json',
                  f'--metadata={metadata_csv}', f'--gradcam={tmp_path / "cams"}', *images)
  assert result.returncode == 0, result.stderr
  records = {pathlib.Path(r['image']).stem: r for r in map(json.loads, result.stdout.splitlines())}
  run = inference.load_run(workdir, 'best')
  external = checkpoint_eval.external_set(folder / 'images', folder / 'with_metadata.csv', run)
  expected_probs = run.predict(external.source, external.indices)
  got = np.array([list(records[image_id]['probabilities'].values())
                  for image_id in external.image_ids])
  np.testing.assert_allclose(got, expected_probs, atol=1e-5)
  assert all(pathlib.Path(r['gradcam']).is_file() for r in records.values())

  # A CSV without one of the images: one line, and no Grad-CAM folder is made.
  partial = tmp_path / 'partial.csv'
  partial.write_text('\n'.join(metadata_csv.read_text().splitlines()[:-1]) + '\n')
  result = script(python, 'predict.py', f'--workdir={workdir}', f'--metadata={partial}',
                  f'--gradcam={tmp_path / "cams2"}', *images)
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: --metadata {partial} has no row for 1 of the {len(images)} images: '
      f"{rows[-1]['image_id']}. Add their rows (empty values for what is unknown), or predict "
      'them without --metadata.')
  assert not (tmp_path / 'cams2').exists()


def test_predict_script_refuses_metadata_for_an_image_only_run(tiny_run, test_split_as_files, tmp_path,
                                                               python):
  folder, _, _, _ = test_split_as_files
  result = script(python, 'predict.py', f'--workdir={tiny_run[0]}',
                  f'--metadata={folder / "with_metadata.csv"}', folder / 'images')
  assert result.returncode != 0 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: --metadata {folder / "with_metadata.csv"}: the run in {tiny_run[0]} was trained on '
      'images alone')


def test_an_export_refuses_a_metadata_model_before_writing(loaded, tmp_path):
  with pytest.raises(ValueError, match='trained with patient metadata .age, sex, site.'):
    onnx_file.export(loaded, tmp_path / 'export')
  assert not (tmp_path / 'export').exists()


def test_a_run_saved_before_metadata_existed_loads_and_predicts_unchanged(tiny_run, tmp_path):
  workdir = shutil.copytree(tiny_run[0], tmp_path / 'old', ignore=shutil.ignore_patterns('eval'))
  saved = json.loads((workdir / 'config.json').read_text())
  del saved['model']['metadata'], saved['model']['metadata_dropout']
  (workdir / 'config.json').write_text(json.dumps(saved))
  old = inference.load_run(workdir, 'best')
  assert old.metadata_encoder is None and tuple(old.config.model.metadata) == ()
  data = checkpoint_eval.run_split(old, 'test')
  _, _, report_probs = read_predictions(workdir / 'report' / 'predictions.csv')
  np.testing.assert_allclose(old.predict(data.source, data.indices), report_probs, atol=2e-6)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize('overrides, message', [
    ({'model.metadata': ('age', 'weight')},
     "config.model.metadata names 'weight': use some of age, sex, site, each once"),
    ({'model.metadata': ('age', 'age')}, 'config.model.metadata repeats age'),
    ({'model.metadata_dropout': 1.0}, 'config.model.metadata_dropout=1.0 must be in .0, 1.'),
])
def test_bad_metadata_settings_are_refused_before_anything_is_written(overrides, message, tmp_path):
  config = metadata_config(**overrides)
  with pytest.raises(ValueError, match=message):
    config_checks.validate(config)
  with pytest.raises(ValueError, match=message):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_metadata_cannot_change_on_resume_even_when_changes_are_allowed(metadata_run):
  workdir, _ = metadata_run
  config = tiny_config(**{'model.metadata': ('age',), 'train.allow_config_change': True})
  with pytest.raises(ValueError) as error:
    train.train_and_evaluate(config, str(workdir))
  assert str(error.value) == (
      f"{workdir} holds checkpoints of a model with metadata ['age', 'sex', 'site'], but "
      "config.model.metadata is ['age']: the model would have other parameters. Use another "
      f'--workdir, or delete {workdir} to start over.')


def test_a_field_the_dataset_has_no_column_for_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(handle.SyntheticDataset, 'description',
                      dataclasses.replace(datasets.SYNTHETIC, metadata_columns=('age', 'sex')))
  with pytest.raises(pm.MetadataError) as error:
    train.train_and_evaluate(metadata_config(), str(tmp_path / 'run'))
  assert str(error.value) == (
      'config.model.metadata asks for site, but synthetic has no such column (it has age, sex; '
      'looked for site: site, anatom_site_general, anatom_site_general_challenge, localization): '
      'remove it from config.model.metadata.')
  assert not (tmp_path / 'run').exists()

"""Any dermoscopy dataset: scripts/prepare_dataset.py on a replica of every download format, the
description it records, bad input, and what evaluation does with a dataset's own classes.

The end-to-end runs (an 8-class ISIC-2019-shaped set and a binary ISIC-2020-shaped one, through
training, evaluate.py, predict.py and compare.py) are in test_dataset_runs.py; HAM10000 through
both new formats on the real images is in test_ham10000_real.py.
"""

import contextlib
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from sklearn import metrics as skm

from skinjax.data import datasets
from skinjax.data import formats
from skinjax.evaluation import external
from skinjax.evaluation import report
from tests import dataset_fixtures as fx

REPO = pathlib.Path(__file__).resolve().parents[1]
SHORT_SIDE = 32


def prepare_cli(*args, cwd=REPO):
  return subprocess.run([sys.executable, str(REPO / 'scripts' / 'prepare_dataset.py'),
                         *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def read(format_name, manual_dir, **options):
  with contextlib.ExitStack() as open_files:
    return formats.read(format_name, manual_dir, formats.Options(name='test', **options), open_files)


@pytest.fixture(scope='module')
def downloads(tmp_path_factory):
  root = tmp_path_factory.mktemp('downloads')
  return {'isic_archive': fx.write_isic_archive(root / 'archive'),
          'isic_archive_legacy': fx.write_isic_archive(root / 'archive_legacy', legacy_diagnosis=True),
          'isic2019': fx.write_isic2019(root / 'isic2019'),
          'isic2020': fx.write_isic2020(root / 'isic2020'),
          'csv': fx.write_clinic_csv(root / 'clinic')}


def rows_of(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


# ---------------------------------------------------------------- reading each format


def test_isic_archive_with_diagnosis_levels(downloads):
  folder = downloads['isic_archive']
  collection = read('isic_archive', folder, label_column='diagnosis_3')
  metadata = rows_of(folder / 'metadata.csv')
  description = collection.description
  assert description.class_names == tuple(sorted(fx.ARCHIVE_DIAGNOSIS_3.values()))
  assert description.melanoma == 'Melanoma, NOS' and description.group_key == 'lesion_id'
  # The file columns leave; the clinical ones and the other diagnosis levels are kept.
  assert 'attribution' not in description.metadata_columns
  assert {'age_approx', 'sex', 'anatom_site_general', 'diagnosis_1'} <= set(description.metadata_columns)
  by_id = {r['image_id']: r for r in collection.records}
  assert len(by_id) == len(metadata)
  for row in metadata:
    record = by_id[row['isic_id']]
    assert record['dx'] == row['diagnosis_3']
    assert record['metadata']['age_approx'] == row['age_approx']  # empty stays empty
    # No lesion_id: the image is its own group (never pooled with other unmatched images).
    assert record['group'] == (row['lesion_id'] or f"image:{row['isic_id']}")
  assert any(not row['lesion_id'] for row in metadata)
  assert any(c.location.endswith('.png') for c in collection.images.values())


def test_isic_archive_older_downloads_have_one_diagnosis_column(downloads):
  collection = read('isic_archive', downloads['isic_archive_legacy'])
  assert collection.description.class_names == tuple(sorted(
      v.lower() for v in fx.ARCHIVE_DIAGNOSIS_3.values()))
  assert 'benign_malignant' in collection.description.metadata_columns


def test_isic_archive_without_a_label_column_names_the_choices(downloads):
  with pytest.raises(formats.DatasetError, match='has no diagnosis column; pick the label with '
                                                 '--label_column, e.g. one of diagnosis_1, diagnosis_2, diagnosis_3'):
    read('isic_archive', downloads['isic_archive'])


def test_label_map_merges_and_drops_and_unlabelled_rows_are_counted(downloads, tmp_path):
  folder = tmp_path / 'archive'
  fx.write_isic_archive(folder)
  metadata = rows_of(folder / 'metadata.csv')
  metadata[0]['diagnosis_3'] = ''  # not yet diagnosed
  with open(folder / 'metadata.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, list(metadata[0]))
    writer.writeheader()
    writer.writerows(metadata)
  label_map = fx.write_label_map(tmp_path / 'map.csv', {
      'Melanoma, NOS': 'mel', 'Nevus': 'nv', 'Solar or actinic keratosis': 'keratosis',
      'Pigmented benign keratosis': 'keratosis', 'Hemangioma': ''})
  collection = read('isic_archive', folder, label_column='diagnosis_3', label_map=str(label_map))
  description = collection.description
  # Unmapped values stay as they are; merged ones become one class; a dropped value leaves.
  assert description.class_names == ('Basal cell carcinoma', 'Dermatofibroma', 'keratosis', 'mel', 'nv')
  assert description.melanoma == 'mel'
  hemangioma = sum(r['diagnosis_3'] == 'Hemangioma' for r in metadata)
  assert collection.left_out == {'no label': 1, 'dropped by --label_map': hemangioma}
  assert len(collection.records) == len(metadata) - 1 - hemangioma


def test_isic2019_eight_classes_unk_left_out_groups_by_lesion(downloads):
  folder = downloads['isic2019']
  collection = read('isic2019', folder)
  description = collection.description
  assert description.class_names == ('mel', 'nv', 'bcc', 'ak', 'bkl', 'df', 'vasc', 'scc')
  assert description.group_key == 'lesion_id' and description.melanoma == 'mel'
  assert description.metadata_columns == ('age_approx', 'anatom_site_general', 'sex')
  assert description.challenge.columns == fx.ISIC2019_COLUMNS
  assert description.challenge.class_of_column['UNK'] is None
  truth = rows_of(folder / 'ISIC_2019_Training_GroundTruth.csv')
  lesion_of = {r['image']: r['lesion_id'] for r in rows_of(folder / 'ISIC_2019_Training_Metadata.csv')}
  by_id = {r['image_id']: r for r in collection.records}
  assert by_id.keys() == {r['image'] for r in truth}
  for row in truth:
    column = next(c for c in fx.ISIC2019_COLUMNS if row[c] == '1.0')
    assert by_id[row['image']]['dx'] == column.lower()
    assert by_id[row['image']]['group'] == (lesion_of[row['image']] or f"image:{row['image']}")
  assert any(i.endswith('_downsampled') for i in by_id)
  assert not (folder / 'ISIC_2019_Training_Input' / 'LICENSE.txt').stem in collection.images


def test_isic2020_binary_grouped_by_patient(downloads):
  folder = downloads['isic2020']
  collection = read('isic2020', folder)
  description = collection.description
  assert description.class_names == ('benign', 'melanoma') and description.is_binary_melanoma
  assert description.group_key == 'patient_id'
  assert description.challenge.image_column == 'image_name'
  assert description.challenge.columns == ('target',)
  truth = {r['image_name']: r for r in rows_of(folder / 'train.csv')}
  for record in collection.records:
    row = truth[record['image_id']]
    assert record['dx'] == ('melanoma' if row['target'] == '1' else 'benign')
    assert record['group'] == row['patient_id']
    assert record['metadata']['anatom_site_general_challenge'] == row['anatom_site_general_challenge']


def test_csv_folder_with_named_columns(downloads):
  folder = downloads['csv']
  collection = read('csv', folder, image_column='file', label_column='diagnosis',
                    group_column='patient')
  description = collection.description
  assert description.class_names == ('benign', 'melanoma', 'other')
  assert description.group_key == 'patient_id' and description.melanoma == 'melanoma'
  assert description.metadata_columns == ('age', 'notes')
  rows = rows_of(folder / 'labels.csv')
  by_id = {r['image_id']: r for r in collection.records}
  for row in rows:
    stem = row['file'].rsplit('.', 1)[0]  # ids without their suffix, .png and .jpeg alike
    assert by_id[stem]['dx'] == row['diagnosis'] and by_id[stem]['group'] == row['patient']
    assert by_id[stem]['metadata']['notes'] == 'ok, checked'  # a comma inside a quoted value


def test_csv_without_a_group_column_warns_that_the_split_may_leak(downloads, caplog):
  collection = read('csv', downloads['csv'], image_column='file', label_column='diagnosis')
  assert collection.description.group_key == 'image'
  assert 'each image is its own group' in caplog.text


# ---------------------------------------------------------------- the prepare command


@pytest.mark.parametrize('format_name, flags, classes, group_key', [
    ('isic_archive', ['--label_column=diagnosis_3'], 7, 'lesion_id'),
    ('isic2019', [], 8, 'lesion_id'),
    ('isic2020', [], 2, 'patient_id'),
    ('csv', ['--image_column=file', '--label_column=diagnosis', '--group_column=patient'], 3,
     'patient_id'),
])
def test_prepare_dataset_records_the_description(downloads, tmp_path, format_name, flags, classes,
                                                 group_key):
  result = prepare_cli(f'--format={format_name}', f'--manual_dir={downloads[format_name]}',
                       f'--data_dir={tmp_path}', f'--image_size={SHORT_SIDE}', *flags)
  assert result.returncode == 0, result.stderr
  version_dir = tmp_path / format_name / f'short{SHORT_SIDE}' / '1.0.0'
  info = json.loads((version_dir / 'metadata.json').read_text())
  description = datasets.DatasetDescription.from_json(info['description'])
  assert description.name == format_name and description.num_classes == classes
  assert description.group_key == group_key
  assert f'--config.data.dataset={format_name}' in result.stdout
  splits = rows_of(version_dir / 'splits.csv')
  assert {r['split'] for r in splits} == {'train', 'val', 'test'}
  # Nothing of one group crosses splits.
  group_column = description.group_column
  split_of_group = {}
  for row in splits:
    assert split_of_group.setdefault(row[group_column], row['split']) == row['split']
  from skinjax.data import handle, prepared
  dataset = handle.PreparedDataset(tmp_path, format_name, SHORT_SIDE)
  assert dataset.description == description and len(dataset.source) == len(splits)
  assert sum(info['class_counts'].values()) == len(dataset.source)
  example = dataset.source[0]
  assert set(example['metadata']) == {prepared.feature_name(c) for c in description.metadata_columns}
  if format_name == 'isic2019':
    # A model's metadata encoder reads each stored record as it reads the download's own row.
    from skinjax.data import patient_metadata
    encoder = patient_metadata.MetadataEncoder(patient_metadata.FIELDS)
    assert patient_metadata.missing_fields(encoder.fields, description.metadata_columns) == []
    downloaded = {row['image']: row for row in
                  rows_of(downloads[format_name] / 'ISIC_2019_Training_Metadata.csv')}
    stored = [dataset.source[i] for i in range(len(dataset.source))]
    encoded = np.stack([encoder.encode(record['metadata']) for record in stored])
    np.testing.assert_array_equal(encoded, np.stack(
        [encoder.encode(downloaded[record['image_id'].decode()]) for record in stored]))
    assert 0 < encoded[:, 1].sum() < len(stored)  # some ages unknown, others known
  # A second run reuses it.
  again = prepare_cli(f'--format={format_name}', f'--manual_dir={downloads[format_name]}',
                      f'--data_dir={tmp_path}', f'--image_size={SHORT_SIDE}', *flags)
  assert again.returncode == 0 and 'already prepared; reusing it' in again.stdout


def test_name_prepares_a_second_dataset_of_one_format(downloads, tmp_path):
  for name in ('clinic_a', 'clinic_b'):
    result = prepare_cli('--format=csv', f'--manual_dir={downloads["csv"]}', f'--name={name}',
                         f'--data_dir={tmp_path}', f'--image_size={SHORT_SIDE}',
                         '--image_column=file', '--label_column=diagnosis')
    assert result.returncode == 0, result.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == ['clinic_a', 'clinic_b']


def _rewrite(path, transform):
  rows = rows_of(path)
  header = list(rows[0])
  rows = transform(rows) or rows
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, header)
    writer.writeheader()
    writer.writerows(rows)


def _one_class(rows):
  for row in rows:
    row['diagnosis'] = 'benign'


def _few_melanoma_patients(rows):
  patients = sorted({r['patient'] for r in rows if r['diagnosis'] == 'melanoma'})
  for row in rows:
    if row['diagnosis'] == 'melanoma' and row['patient'] not in patients[:2]:
      row['diagnosis'] = 'benign'


def _twice_with_two_labels(rows):
  return rows + [{**rows[0], 'diagnosis': 'other' if rows[0]['diagnosis'] != 'other' else 'benign'}]


def _empty_groups(rows):
  for row in rows:
    row['patient'] = ''


@pytest.mark.parametrize('case, flags, transform, message', [
    ('missing label column', ['--label_column=dx'], None,
     r"labels.csv has no column dx \(its columns: file, diagnosis, patient, age, notes\); name the "
     r'label column with --label_column\.'),
    ('one class', [], _one_class,
     r'has only one class \(benign\); a classifier needs at least two\.'),
    ('too few groups', [], _few_melanoma_patients,
     r'the classes melanoma \(2\) have fewer than 3 lesions/patients, too few to appear in the '
     r'train, val and test splits\.'),
    ('image twice, two labels', [], _twice_with_two_labels,
     r'lists 1 images twice with different labels \(clinic_\d+: '),
    ('empty group column', [], _empty_groups,
     r"the group column 'patient' is empty in every row"),
])
def test_bad_input_gets_one_line_and_writes_nothing(tmp_path, case, flags, transform, message):
  folder = fx.write_clinic_csv(tmp_path / 'clinic')
  if transform:
    _rewrite(folder / 'labels.csv', transform)
  data_dir = tmp_path / 'tfds'
  flags = flags or ['--label_column=diagnosis']
  result = prepare_cli('--format=csv', f'--manual_dir={folder}', f'--data_dir={data_dir}',
                       '--image_column=file', '--group_column=patient', *flags)
  assert result.returncode == 1, result.stdout
  assert 'Traceback' not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and len(result.stderr.strip().splitlines()) == 1, result.stderr
  import re
  assert re.search(message, last), last
  assert not data_dir.exists()


def test_ham10000_name_is_kept_for_its_own_download(downloads, tmp_path):
  result = prepare_cli('--format=isic2020', f'--manual_dir={downloads["isic2020"]}',
                       '--name=ham10000', f'--data_dir={tmp_path / "tfds"}')
  assert result.returncode == 1
  assert result.stderr.strip() == ('error: --name=ham10000 is HAM10000 prepared from its own '
                                   'download; name the isic2020 dataset otherwise, e.g. '
                                   '--name=isic2020.')


# ---------------------------------------------------------------- evaluation in the dataset's classes


def test_sensitivity_at_specificity_against_every_threshold():
  rng = np.random.default_rng(0)
  positives = rng.random(300) < 0.2
  scores = np.round(rng.random(300) + positives * 0.4, 2)  # rounded: many ties
  ours = report.sensitivity_at_specificity(positives, scores, (0.8, 0.9, 0.95))
  for level in (0.8, 0.9, 0.95):
    best = 0.0
    for threshold in np.unique(np.concatenate([scores, [np.inf]])):
      predicted = scores >= threshold
      specificity = (~predicted & ~positives).sum() / (~positives).sum()
      if specificity >= level:
        best = max(best, (predicted & positives).sum() / positives.sum())
    assert ours[f'{level:.2f}'] == pytest.approx(best)


ISIC2020 = datasets.DatasetDescription(
    'isic2020', 'isic2020', ('benign', 'melanoma'), 'melanoma', 'patient_id', (),
    datasets.Challenge('isic2020', 'image_name', ('target',), {'target': 'melanoma'}))
ISIC2019 = datasets.DatasetDescription(
    'isic2019', 'isic2019', ('mel', 'nv', 'bcc', 'ak', 'bkl', 'df', 'vasc', 'scc'), 'mel',
    'lesion_id', (), datasets.challenge_for('isic2019', ('mel', 'nv', 'bcc', 'ak', 'bkl', 'df',
                                                         'vasc', 'scc'), datasets.ISIC2019_COLUMNS))


def test_binary_report_has_auc_sensitivity_and_the_isic2020_submission(tmp_path):
  rng = np.random.default_rng(1)
  labels = (rng.random(80) < 0.3).astype(np.int64)
  melanoma = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, 80), 0.01, 0.99)
  probs = np.stack([1 - melanoma, melanoma], 1)
  ids = [f'ISIC_{i:07d}' for i in range(80)]
  patients = [f'IP_{i // 3}' for i in range(80)]
  metrics = report.write_report(tmp_path, labels, probs, ids, ISIC2020, groups=patients)
  assert metrics['auc'] == pytest.approx(skm.roc_auc_score(labels, melanoma))
  assert metrics['sensitivity_at_specificity'] == report.sensitivity_at_specificity(
      labels == 1, melanoma, (0.8, 0.9, 0.95))
  assert metrics['melanoma_recall'] == pytest.approx(skm.recall_score(labels, probs.argmax(1)))
  assert metrics['ci']['unit'] == 'patient'
  assert 'sensitivity at specificity 0.80' in report.format_summary(metrics)
  submission = rows_of(tmp_path / 'predictions_isic.csv')
  assert list(submission[0]) == ['image_name', 'target']
  assert [r['image_name'] for r in submission] == ids
  np.testing.assert_allclose([float(r['target']) for r in submission], melanoma, atol=1e-8)
  assert [r['patient_id'] for r in rows_of(tmp_path / 'predictions.csv')] == patients


def test_isic2019_submission_has_every_challenge_column(tmp_path):
  rng = np.random.default_rng(2)
  probs = rng.dirichlet(np.ones(8), 16)
  labels = np.arange(16) % 8
  report.write_report(tmp_path, labels, probs, [f'ISIC_{i}' for i in range(16)], ISIC2019)
  submission = rows_of(tmp_path / 'predictions_isic.csv')
  assert list(submission[0]) == ['image', *datasets.ISIC2019_COLUMNS]
  for row, p in zip(submission, probs):
    assert float(row['UNK']) == 0.0
    assert [float(row[c]) for c in datasets.ISIC2019_COLUMNS[:8]] == pytest.approx(p, abs=1e-8)


def _isic2019_truth(path, classes_of_rows):
  lines = ['image,' + ','.join(datasets.ISIC2019_COLUMNS)]
  for i, column in enumerate(classes_of_rows):
    lines.append(f'ISIC_{i:07d},' + ','.join('1.0' if c == column else '0.0'
                                            for c in datasets.ISIC2019_COLUMNS))
  path.write_text('\n'.join(lines) + '\n')


def test_an_isic2019_model_scores_scc_and_a_ham10000_model_refuses_it(tmp_path):
  _isic2019_truth(tmp_path / 'gt.csv', ['SCC', 'MEL', 'AK'])
  labelled = external.read_labels(tmp_path / 'gt.csv', ISIC2019)
  assert [ISIC2019.class_names[i] for i in labelled.labels] == ['scc', 'mel', 'ak']
  with pytest.raises(external.ExternalDataError, match=r'1 images are labelled with a class that '
                                                       r'ham10000 lacks.*ISIC_0000000 \(SCC\)'):
    external.read_labels(tmp_path / 'gt.csv', datasets.HAM10000)
  # The ISIC 2018 ground truth in an ISIC 2019 model's classes: AKIEC is its AK.
  (tmp_path / 'gt2018.csv').write_text('image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_1,0,0,0,1,0,0,0\n'
                                       'ISIC_2,1,0,0,0,0,0,0\n')
  labelled = external.read_labels(tmp_path / 'gt2018.csv', ISIC2019)
  assert [ISIC2019.class_names[i] for i in labelled.labels] == ['ak', 'mel']


def test_isic2020_ground_truth_scores_a_binary_model_only(tmp_path):
  (tmp_path / 'gt.csv').write_text(
      'image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,'
      'benign_malignant,target\nISIC_1,IP_1,male,45.0,torso,nevus,benign,0\n'
      'ISIC_2,IP_1,male,45.0,torso,melanoma,malignant,1\n')
  labelled = external.read_labels(tmp_path / 'gt.csv', ISIC2020)
  assert list(labelled.labels) == [0, 1] and list(labelled.groups) == ['IP_1', 'IP_1']
  with pytest.raises(external.ExternalDataError, match='scores a melanoma-against-benign model; '
                                                       'this one predicts 7 ham10000 classes'):
    external.read_labels(tmp_path / 'gt.csv', datasets.HAM10000)


def test_a_corrupt_image_is_named_or_skipped(tmp_path):
  folder = fx.write_clinic_csv(tmp_path / 'clinic')
  broken = sorted((folder / 'images').glob('*.png'))[0]
  broken.write_bytes(broken.read_bytes()[:100])  # an interrupted copy
  flags = ['--format=csv', f'--manual_dir={folder}', '--image_column=file',
           '--label_column=diagnosis', '--group_column=patient']
  result = prepare_cli(*flags, f'--data_dir={tmp_path / "a"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert f'Cannot decode the image {broken}' in result.stderr.strip().splitlines()[-1]
  assert not any((tmp_path / 'a').glob('csv/*/*/dataset_info.json'))
  result = prepare_cli(*flags, f'--data_dir={tmp_path / "b"}', '--skip_bad_images')
  assert result.returncode == 0, result.stderr
  assert 'Skipped 1 unreadable images' in result.stdout
  skipped = rows_of(tmp_path / 'b' / 'csv' / 'short256' / '1.0.0' / 'skipped.csv')
  assert [(r['image_id'], r['path']) for r in skipped] == [(broken.stem, str(broken))]


def test_ham10000_prepared_today_records_its_description(tmp_path):
  from skinjax.data import ham10000
  from tests.ham_fixtures import make_kaggle_folder
  dataset = ham10000.prepare(make_kaggle_folder(tmp_path / 'download', num_lesions=21),
                             tmp_path / 'tfds', 32)
  info = json.loads((pathlib.Path(dataset.path) / 'metadata.json').read_text())
  assert info['description'] == datasets.HAM10000.to_json()
  assert dataset.description == datasets.HAM10000


def test_label_map_merges_classes_of_a_fixed_format(downloads, tmp_path):
  """ISIC 2019's keratinocyte cancers merged into one class, vascular lesions dropped."""
  label_map = fx.write_label_map(tmp_path / 'map.csv', {'ak': 'kc', 'scc': 'kc', 'bcc': 'kc',
                                                        'vasc': ''})
  collection = read('isic2019', downloads['isic2019'], label_map=str(label_map))
  assert collection.description.class_names == ('mel', 'nv', 'bkl', 'df', 'kc')
  assert collection.left_out == {'dropped by --label_map': sum(
      r['VASC'] == '1.0' for r in rows_of(downloads['isic2019'] / 'ISIC_2019_Training_GroundTruth.csv'))}
  # The challenge file keeps its columns; those of merged classes have no class of ours.
  assert collection.description.challenge.class_of_column['SCC'] is None

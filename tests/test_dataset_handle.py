"""The dataset handle: folders prepared by earlier code load as they did, with the fingerprints their
runs recorded, and a training start builds the TFDS builder once.

tests/golden/prepared_by_earlier_code.tar.gz holds two tiny folders prepared by the code before
HAM10000 became one format among the others (its own TFDS builder wrote HAM10000); the JSON beside
it records what that code loaded from them and how they were made.
"""

import hashlib
import json
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import base
from skinjax.data import datasets
from skinjax.data import formats
from skinjax.data import handle
from skinjax.data import prepared
from skinjax.data import splits as splits_lib
from tests import dataset_fixtures
from tests import ham_fixtures
from tests.helpers import GOLDEN, unpack_golden

SHORT_SIDE = 16  # what the golden folders were prepared with
NAMES = ('ham10000', 'isic2020')


@pytest.fixture(scope='module')
def golden():
  return json.loads((GOLDEN / 'prepared_by_earlier_code.json').read_text())['datasets']


@pytest.fixture(scope='module')
def earlier_data_dir(tmp_path_factory):
  root = unpack_golden('prepared_by_earlier_code.tar.gz', tmp_path_factory.mktemp('earlier'))
  return root / 'prepared'


def config_for(data_dir, name):
  config = base.get_config()
  config.data.source, config.data.dataset = 'prepared', name
  config.data.data_dir, config.data.prepared_size = str(data_dir), SHORT_SIDE
  return config


def assert_loads_as_recorded(dataset, expected):
  assert dataset.fingerprint == expected['fingerprint']
  assert dataset.description.to_json() == expected['description']
  assert len(dataset.source) == expected['num_examples']
  for key in ('image_id', 'group', 'label'):
    assert dataset.metadata[key].tolist() == expected['metadata'][key], key
  # The same order of the same groups gives the same splits.
  made = splits_lib.make_splits(dataset.metadata['label'], dataset.metadata['group'], seed=0)
  assert {k: v.tolist() for k, v in made.items()} == expected['make_splits_seed0']


@pytest.mark.parametrize('name', NAMES)
def test_a_folder_prepared_by_earlier_code_loads_as_it_did(earlier_data_dir, golden, name):
  config = config_for(earlier_data_dir, name)
  dataset = handle.PreparedDataset.open(config)
  assert_loads_as_recorded(dataset, golden[name])
  first, expected = dataset.source[0], golden[name]['first_example']
  assert first['image_id'].decode() == expected['image_id'] and first['label'] == expected['label']
  assert hashlib.sha256(first['image']).hexdigest() == expected['image_sha256']
  # What the trainer records to guard a resume, opened as the trainer opens it.
  assert handle.PreparedDataset.open(config).fingerprint == golden[name]['fingerprint']


def test_ham10000_from_before_descriptions_and_metadata_csv(earlier_data_dir, golden, tmp_path):
  """The earliest HAM10000 folders recorded no description and had no metadata.csv."""
  data_dir = tmp_path / 'prepared'
  shutil.copytree(earlier_data_dir / 'ham10000', data_dir / 'ham10000')
  version_dir = data_dir / 'ham10000' / f'short{SHORT_SIDE}' / '1.0.0'
  info = json.loads((version_dir / 'metadata.json').read_text())
  del info['description']
  (version_dir / 'metadata.json').write_text(json.dumps(info))
  (version_dir / 'metadata.csv').unlink()
  dataset = handle.PreparedDataset(data_dir, 'ham10000', SHORT_SIDE)
  assert dataset.description == datasets.HAM10000
  assert_loads_as_recorded(dataset, golden['ham10000'])  # metadata read from the records


def _download_as_recorded(name, root):
  """The downloads the golden folders were prepared from (see the JSON's made_with)."""
  if name == 'ham10000':
    return ham_fixtures.make_kaggle_folder(root, num_lesions=21, images_per_lesion=(1, 2),
                                           image_size=(16, 12), num_large_images=2,
                                           large_image_size=(48, 36))
  download = dataset_fixtures.write_isic2020(root, patients=9)
  for path in (download / 'train').glob('*.jpg'):
    Image.open(path).resize((16, 12)).save(path, quality=75)
  return download


@pytest.mark.parametrize('name', NAMES)
def test_the_same_download_prepared_today_keeps_its_fingerprint(golden, tmp_path, name):
  """So a run resumes on a dataset prepared again from its download, HAM10000 included."""
  download = _download_as_recorded(name, tmp_path / 'download')
  prepared.prepare(name, download, tmp_path / 'tfds', options=formats.Options(name=name),
                   short_side=SHORT_SIDE)
  assert_loads_as_recorded(handle.PreparedDataset(tmp_path / 'tfds', name, SHORT_SIDE), golden[name])


def test_a_training_start_builds_the_tfds_builder_once(earlier_data_dir, monkeypatch):
  built = []
  original = tfds.core.DatasetBuilder.__init__

  def counting_init(self, *args, **kwargs):
    built.append(type(self).__name__)
    original(self, *args, **kwargs)

  monkeypatch.setattr(tfds.core.DatasetBuilder, '__init__', counting_init)
  dataset = handle.PreparedDataset.open(config_for(earlier_data_dir, 'isic2020'))
  assert not built  # opening reads nothing
  dataset.fingerprint, dataset.description  # what the resume guard and config.json need
  train = dataset.splits['train']
  dataset.source[int(train[0])]
  assert dataset.metadata is dataset.metadata and dataset.source is dataset.source
  assert built == ['ReadOnlyBuilder']


def test_the_synthetic_source_answers_the_same_attributes():
  config = base.get_config()
  config.data.source, config.data.synthetic_examples, config.seed = 'synthetic', 400, 3
  dataset = handle.PreparedDataset.open(config)
  assert dataset.fingerprint == {'source': 'synthetic', 'num_examples': 400, 'seed': 3}
  assert dataset.description == datasets.SYNTHETIC
  assert len(dataset.source) == 400
  np.testing.assert_array_equal(dataset.metadata['group'], dataset.source.metadata['lesion_id'])
  assert sorted(np.concatenate(list(dataset.splits.values())).tolist()) == list(range(400))


def test_an_unprepared_dataset_names_what_is_there_and_the_command(earlier_data_dir):
  with pytest.raises(handle.DatasetNotPreparedError) as error:
    handle.PreparedDataset(earlier_data_dir, 'isic2019').fingerprint
  message = str(error.value)
  assert message.startswith(f"No dataset named 'isic2019' with short side 256 is prepared in "
                            f'{earlier_data_dir}. It holds ham10000, isic2020 (set config.data.dataset')
  assert message.endswith('python scripts/prepare_dataset.py --format=isic2019 '
                          f'--manual_dir=DOWNLOAD_DIR --data_dir={earlier_data_dir}')


def test_an_unknown_source_is_named():
  config = base.get_config()
  config.data.source = 'kaggle'
  with pytest.raises(ValueError, match=r"config.data.source='kaggle': use 'prepared' or 'synthetic'"):
    handle.PreparedDataset.open(config)

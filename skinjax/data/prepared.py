"""Any dermoscopy dataset, prepared once with TFDS and loaded by name with its description.

A prepared dataset lives in data_dir/<name>/short{S}/<version>/, as HAM10000 does: the TFDS
ArrayRecord files, metadata.csv (image_id, group, dx, label in source order) and, when images
were left out, skipped.csv. Its DatasetInfo metadata records the `DatasetDescription` (classes,
melanoma class, grouping key, metadata columns, challenge format) and what was read.

HAM10000 prepared under its own name keeps its own builder (skinjax/data/ham10000.py), so that
its files and fingerprint stay what they were; every other dataset -- HAM10000 too, prepared
under another name -- goes through `DermoscopyBuilder`, whose TFDS name is the dataset's name.
Reading needs no builder class: TFDS reads the prepared directory by itself.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import os
import re
import shutil
import tempfile
import types

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from skinjax.data import datasets
from skinjax.data import formats
from skinjax.data import ham10000
from skinjax.data import ham10000_builder as hb

DEFAULT_NAME = 'ham10000'
VERSION = '1.0.0'
STAGING_PREFIX = '.dataset-incomplete-'
# metadata.csv beside the data, in source order, so that splitting never reads the images.
METADATA_KEYS = ('image_id', 'group', 'dx')
_NAME = re.compile(r'[a-z][a-z0-9_]*')


class DermoscopyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a `formats.Collection`; each dataset name gets its own subclass (`builder_class`)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): 'All labelled images in one `train` split, with their description.'}
  BUILDER_CONFIGS = [hb.config_for(hb.DEFAULT_SHORT_SIDE)]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)  # as in ham10000_builder: TFDS's own lookup needs a missing module

  def __init__(self, *, collection: formats.Collection, skip_bad_images: bool = False, **kwargs):
    kwargs.setdefault('file_format', tfds.core.FileFormat.ARRAY_RECORD)
    self.collection = collection
    self.skip_bad_images = skip_bad_images
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    description = self.collection.description
    text = tfds.features.Text
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 3), encoding_format='jpeg'),
            'label': tfds.features.ClassLabel(names=description.class_names),
            'image_id': text(),
            'dx': text(),
            'group': text(doc=f'The split group: {description.group_key}'),
            'metadata': tfds.features.FeaturesDict(
                {_feature_name(c): text() for c in description.metadata_columns}),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    collection = self.collection
    short_side = self.builder_config.short_side
    counts, skipped = collections.Counter(), []
    for record, image in hb.stored_images(collection.records, collection.images, short_side,
                                          self.skip_bad_images, skipped):
      counts[record['dx']] += 1
      yield record['image_id'], {
          'image': image, 'label': record['dx'], 'image_id': record['image_id'],
          'dx': record['dx'], 'group': record['group'],
          'metadata': {_feature_name(c): v for c, v in record['metadata'].items()}}
    if not counts:
      raise formats.DatasetError(f'None of the {len(collection.records)} images could be read: '
                                 'the download is damaged. Download it again.')
    description = collection.description
    self.info.metadata.update({
        'description': description.to_json(),
        'metadata_sha256': collection.labels_sha256,
        'class_counts': {name: counts[name] for name in description.class_names},
        'skipped_images': len(skipped),
        'left_out': dict(collection.left_out),
    })
    hb.write_skipped_file(self.data_dir, skipped)

  def _post_download_and_prepare_hook(self) -> None:
    hb.write_metadata_file(self, METADATA_KEYS)


@functools.cache
def builder_class(name: str) -> type[DermoscopyBuilder]:
  """A builder whose TFDS name is `name`, so that it writes data_dir/<name>/."""
  return types.new_class(f'Dermoscopy_{name}', (DermoscopyBuilder,), {'skip_registration': True},
                         lambda namespace: namespace.update(
                             name=name, __module__=__name__, __doc__=f'The {name} dermoscopy dataset.'))


def _feature_name(column: str) -> str:
  """A TFDS feature key for a CSV column (`anatom_site_general`, `Age (years)` -> `age__years_`)."""
  return re.sub(r'[^0-9a-zA-Z_]', '_', column).lower() or '_'


def check_name(name: str, format_name: str) -> str:
  if not _NAME.fullmatch(name or ''):
    raise formats.DatasetError(f'--name={name!r}: use lowercase letters, digits and _, starting '
                               'with a letter (it names the folder in --data_dir).')
  if name == DEFAULT_NAME and format_name != 'ham10000':
    raise formats.DatasetError(f'--name=ham10000 is HAM10000 prepared from its own download; '
                               f'name the {format_name} dataset otherwise, e.g. --name={format_name}.')
  return name


def version_dir(data_dir, name: str, short_side: int) -> str:
  return os.path.join(os.path.expanduser(os.fspath(data_dir)), name, f'short{short_side}', VERSION)


def prepare(format_name: str, manual_dir, data_dir, *, options: formats.Options,
            short_side: int = hb.DEFAULT_SHORT_SIDE, overwrite: bool = False,
            skip_bad_images: bool = False) -> str:
  """Builds the dataset from the user's download; returns its version dir. A no-op when it is
  prepared, unless `overwrite`. Built in a staging dir and renamed into place when complete."""
  name = check_name(options.name, format_name)
  if short_side < 1:
    raise formats.DatasetError(f'--image_size={short_side}: give a positive number of pixels.')
  if name == DEFAULT_NAME:
    return os.fspath(ham10000.prepare(manual_dir, data_dir, short_side, overwrite=overwrite,
                                      skip_bad_images=skip_bad_images).data_dir)
  data_dir = os.path.expanduser(os.fspath(data_dir))
  target = version_dir(data_dir, name, short_side)
  if is_prepared(data_dir, name, short_side) and not overwrite:
    logging.info('Reusing %s prepared in %s (overwrite=True rebuilds it).', name, target)
    return target
  with contextlib.ExitStack() as open_files:
    # Everything is read and checked before a directory is made: bad input writes nothing.
    collection = formats.read(format_name, manual_dir, options, open_files)
    os.makedirs(data_dir, exist_ok=True)
    staging_dir = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=data_dir)
    try:
      staged = builder_class(name)(collection=collection, config=hb.config_for(short_side),
                                   data_dir=staging_dir, skip_bad_images=skip_bad_images)
      staged.download_and_prepare()
      ham10000._move_into_place(os.fspath(staged.data_path), target, staging_dir)  # noqa: SLF001
    finally:
      shutil.rmtree(staging_dir, ignore_errors=True)
  return target


def is_prepared(data_dir, name: str, short_side: int) -> bool:
  if name == DEFAULT_NAME:
    return ham10000.is_prepared(data_dir, short_side)
  return os.path.isfile(os.path.join(version_dir(data_dir, name, short_side), 'dataset_info.json'))


def _read_only_builder(data_dir, name: str, short_side: int):
  path = version_dir(data_dir, name, short_side)
  if not os.path.isfile(os.path.join(path, 'dataset_info.json')):
    raise ham10000.DatasetNotPreparedError(_not_prepared_message(data_dir, name, short_side))
  return tfds.builder_from_directory(path)


def load(data_dir, name: str = DEFAULT_NAME, short_side: int = hb.DEFAULT_SHORT_SIDE):
  """(source, metadata arrays in source order: image_id, group, dx, label; description)."""
  if name == DEFAULT_NAME:
    source, metadata = ham10000.load(data_dir, short_side)
    return source, {**metadata, 'group': metadata['lesion_id']}, describe(data_dir, name, short_side)
  builder = _read_only_builder(data_dir, name, short_side)
  source = builder.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
  path = os.path.join(os.fspath(builder.data_dir), hb.METADATA_FILENAME)
  metadata = hb.read_metadata_file(path) if os.path.exists(path) else None
  if metadata is None or len(metadata['image_id']) != len(source):
    metadata = hb.metadata_from_source(source, METADATA_KEYS)
  return source, metadata, description_of(builder)


def description_of(builder) -> datasets.DatasetDescription:
  return datasets.DatasetDescription.from_json(dict(builder.info.metadata)['description'])


def describe(data_dir, name: str = DEFAULT_NAME,
             short_side: int = hb.DEFAULT_SHORT_SIDE) -> datasets.DatasetDescription:
  if name == DEFAULT_NAME:
    # HAM10000 prepared before descriptions were recorded is described by the constant it records now.
    contents = ham10000.contents(data_dir, short_side)
    recorded = contents.get('description')
    return datasets.DatasetDescription.from_json(recorded) if recorded else datasets.HAM10000
  return description_of(_read_only_builder(data_dir, name, short_side))


def fingerprint(data_dir, name: str = DEFAULT_NAME, short_side: int = hb.DEFAULT_SHORT_SIDE) -> dict:
  """What identifies the prepared dataset, from its DatasetInfo alone; see ham10000.fingerprint."""
  if name == DEFAULT_NAME:
    return {'source': 'ham10000', **ham10000.fingerprint(data_dir, short_side)}
  builder = _read_only_builder(data_dir, name, short_side)
  contents = dict(builder.info.metadata)
  return {
      'source': 'prepared',
      'name': builder.name,
      'format': contents['description']['format'],
      'version': str(builder.version),
      'config': f'short{short_side}',
      'metadata_sha256': str(contents['metadata_sha256']),
      'num_examples': int(builder.info.splits['train'].num_examples),
      'class_counts': {k: int(v) for k, v in contents['class_counts'].items()},
      'skipped_images': int(contents['skipped_images']),
  }


def prepared_names(data_dir) -> list[str]:
  data_dir = os.path.expanduser(os.fspath(data_dir))
  found = glob.glob(os.path.join(glob.escape(data_dir), '*', 'short*', '*', 'dataset_info.json'))
  return sorted({os.path.relpath(path, data_dir).split(os.sep)[0] for path in found})


def _not_prepared_message(data_dir, name: str, short_side: int) -> str:
  data_dir = os.path.expanduser(os.fspath(data_dir))
  others = [n for n in prepared_names(data_dir) if n != name]
  message = f'No dataset named {name!r} with short side {short_side} is prepared in {data_dir}.'
  if others:
    message += f' It holds {", ".join(others)} (set config.data.dataset to one of them).'
  return (message + f' Prepare it with:\n  python scripts/prepare_dataset.py --format=FORMAT '
          f'--name={name} --manual_dir=DOWNLOAD_DIR --data_dir={data_dir}'
          + ('' if short_side == hb.DEFAULT_SHORT_SIDE else f' --image_size={short_side}'))

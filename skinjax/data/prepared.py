"""Preparing any dermoscopy dataset once with TFDS: `prepare(format, download, data_dir, options=...)`.

Every format, HAM10000 included, is read into a `formats.Collection` and written by one TFDS
builder, `DermoscopyBuilder`, whose TFDS name is the dataset's name, into the layout that
skinjax/data/storage.py describes. Its DatasetInfo metadata records the `DatasetDescription`
(classes, melanoma class, grouping key, metadata columns, challenge format) and what was read.
Reading a prepared dataset needs no builder class: see skinjax/data/handle.py.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
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
from skinjax.data import patient_metadata
from skinjax.data import storage

# Kept for HAM10000 prepared from its own download: runs on it have recorded its fingerprint under
# this name since before other datasets could be prepared (see handle.py).
HAM10000_NAME = datasets.HAM10000.name
_NAME = re.compile(r'[a-z][a-z0-9_]*')


@dataclasses.dataclass(eq=False)
class ShortSideConfig(tfds.core.BuilderConfig):
  """Stores every image with its short side at most `short_side` pixels."""
  short_side: int = storage.DEFAULT_SHORT_SIDE


@functools.cache  # TFDS recognises its registered configs by identity, not by value
def config_for(short_side: int = storage.DEFAULT_SHORT_SIDE) -> ShortSideConfig:
  return ShortSideConfig(
      name=f'short{short_side}', short_side=short_side,
      description=f'Images resized so that their short side is {short_side} pixels (never upscaled).')


class DermoscopyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes a `formats.Collection`; each dataset name gets its own subclass (`builder_class`).

  ArrayRecord gives grain random access, and TFDS is handed encoded JPEG bytes: neither writing
  nor reading needs TensorFlow.
  """

  VERSION = tfds.core.Version(storage.VERSION)
  RELEASE_NOTES = {storage.VERSION: 'All labelled images in one `train` split, with their description.'}
  BUILDER_CONFIGS = [config_for(storage.DEFAULT_SHORT_SIDE)]

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 finds this through `importlib_resources`, which it imports on every Python but
    # declares only for Python < 3.9 (tensorflow/datasets#11212): use the file directly.
    return epath.Path(__file__)

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
                {feature_name(c): text() for c in description.metadata_columns}),
        }),
        supervised_keys=('image', 'label'),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    # Our own train/val/test splits are computed from the groups, so TFDS holds one split.
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    collection = self.collection
    counts, skipped = collections.Counter(), []
    for record, image in storage.stored_images(collection.records, collection.images,
                                               self.builder_config.short_side,
                                               self.skip_bad_images, skipped):
      counts[record['dx']] += 1
      yield record['image_id'], {
          'image': image, 'label': record['dx'], 'image_id': record['image_id'],
          'dx': record['dx'], 'group': record['group'],
          'metadata': {feature_name(c): v for c, v in record['metadata'].items()}}
    if not counts:
      raise formats.DatasetError(f'None of the {len(collection.records)} images could be read: '
                                 'the download is damaged. Download it again.')
    description = collection.description
    # Still inside TFDS's incomplete dir: these become visible together with the data.
    self.info.metadata.update({
        'description': description.to_json(),
        'metadata_sha256': collection.labels_sha256,
        'class_counts': {name: counts[name] for name in description.class_names},
        'skipped_images': len(skipped),
        'left_out': dict(collection.left_out),
    })
    storage.write_skipped_file(self.data_dir, skipped)

  def _post_download_and_prepare_hook(self) -> None:
    source = self.as_data_source('train', decoders={'image': tfds.decode.SkipDecoding()})
    storage.write_metadata_file(self.data_dir, storage.metadata_from_source(source))

  # TFDS prints 'Downloading and preparing dataset <sizes> to <dir>' before, and 'downloaded and
  # prepared to <dir>' after, on stdout, with no option to turn them off: skinjax downloads
  # nothing, and <dir> is the staging directory, renamed afterwards. Say what happens instead.
  def _log_download_bytes(self) -> None:
    print(f'Preparing {self.name}: storing {len(self.collection.records)} images from your '
          f'download with short side at most {self.builder_config.short_side} px (nothing is '
          'downloaded)...', flush=True)

  def _log_download_done(self) -> None:
    pass  # `prepare` logs where the dataset is once it is in place


@functools.cache
def builder_class(name: str) -> type[DermoscopyBuilder]:
  """A builder whose TFDS name is `name`, so that it writes data_dir/<name>/."""
  return types.new_class(f'Dermoscopy_{name}', (DermoscopyBuilder,), {'skip_registration': True},
                         lambda namespace: namespace.update(
                             name=name, __module__=__name__, __doc__=f'The {name} dermoscopy dataset.'))


# A TFDS feature key for a CSV metadata column: the key the model's metadata encoder looks for.
feature_name = patient_metadata.column_key


def check_name(name: str, format_name: str) -> str:
  if not _NAME.fullmatch(name or ''):
    raise formats.DatasetError(f'--name={name!r}: use lowercase letters, digits and _, starting '
                               'with a letter (it names the folder in --data_dir).')
  if name == HAM10000_NAME and format_name != 'ham10000':
    raise formats.DatasetError(f'--name=ham10000 is HAM10000 prepared from its own download; '
                               f'name the {format_name} dataset otherwise, e.g. --name={format_name}.')
  return name


def prepare(format_name: str, manual_dir, data_dir, *, options: formats.Options,
            short_side: int = storage.DEFAULT_SHORT_SIDE, overwrite: bool = False,
            skip_bad_images: bool = False) -> str:
  """Builds the dataset from the user's download; returns its version dir.

  A no-op when it is prepared, unless `overwrite`. Everything is read and checked before a
  directory is made, so bad input writes nothing; the build happens in a staging dir and is
  renamed into place when complete. `skip_bad_images` leaves out images that cannot be read or
  decoded (listed in skipped.csv next to the data) instead of failing.
  """
  name = check_name(options.name, format_name)
  if short_side < 1:
    raise formats.DatasetError(f'--image_size={short_side}: give a positive number of pixels.')
  data_dir = os.path.expanduser(os.fspath(data_dir))
  target = storage.version_dir(data_dir, name, short_side)
  if storage.is_prepared(data_dir, name, short_side) and not overwrite:
    logging.info('Reusing %s prepared in %s (overwrite=True rebuilds it).', name, target)
    return target
  with contextlib.ExitStack() as open_files:
    collection = formats.read(format_name, manual_dir, options, open_files)
    os.makedirs(data_dir, exist_ok=True)
    storage.warn_about_interrupted_prepares(data_dir)
    staging_dir = tempfile.mkdtemp(prefix=storage.STAGING_PREFIX, dir=data_dir)
    try:
      # TFDS would itself delete an existing dataset before building its replacement, and reuse
      # a directory that merely exists: build apart, then swap.
      staged = builder_class(name)(collection=collection, config=config_for(short_side),
                                   data_dir=staging_dir, skip_bad_images=skip_bad_images)
      staged.download_and_prepare()
      storage.move_into_place(os.fspath(staged.data_path), target, staging_dir)
    finally:
      shutil.rmtree(staging_dir, ignore_errors=True)
  logging.info('Prepared %s in %s.', name, target)
  return target

r"""Prepares any dermoscopy dataset from its download, and writes its grouped 60/20/20 split.

  python scripts/prepare_dataset.py --format=FORMAT --manual_dir=DOWNLOAD_DIR \
      --data_dir=~/tensorflow_datasets [--name=NAME] [--image_size=256] [--overwrite] \
      [--skip_bad_images] [--label_column=COLUMN] [--label_map=MAP.csv] \
      [--image_column=COLUMN] [--group_column=COLUMN] [--csv=LABELS.csv] [--melanoma_class=CLASS]

Formats (see skinjax/data/formats.py for the files each expects):
  ham10000      the HAM10000 download: Kaggle folders, a flat folder or the zips as downloaded
                (scripts/prepare_ham10000.py is this format under the name ham10000)
  isic_archive  `isic image download OUT` (isic-cli): OUT/<isic_id>.jpg and OUT/metadata.csv;
                --label_column picks the label (default: diagnosis, in older downloads), e.g.
                --label_column=diagnosis_3
  isic2019      ISIC_2019_Training_Input/, ISIC_2019_Training_GroundTruth.csv and
                ISIC_2019_Training_Metadata.csv: 8 classes (UNK has no image), grouped by lesion
  isic2020      train/*.jpg and train.csv: benign against melanoma, grouped by patient
  csv           a folder of images and a CSV (--csv, or the folder's only .csv) naming the image,
                label and group columns (--image_column=image, --label_column=label,
                --group_column; lesion_id or patient_id when present)

--label_map=MAP.csv (rows value,class) renames label values, merges several into one class, or
drops them (an empty class). Rows without a label are left out and counted.

The dataset goes to DATA_DIR/NAME/short{image_size}/ under --name (the format's name by default),
which a config selects with --config.data.dataset=NAME. The classes, the melanoma class (a class
named mel or melanoma, or --melanoma_class), the grouping key (lesion_id, else patient_id, else
each image alone, with a warning) and the metadata columns are recorded with it; training,
evaluation and prediction read them from there. Bad input stops with one line that says what to
fix, before anything is written; the build is atomic and a no-op unless --overwrite. Last it
writes splits.csv beside the data and shows how many groups (lesions, patients) a per-image split
would have put on both sides.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from skinjax.data import formats
from skinjax.data import splits as splits_lib
from skinjax.data import storage
from skinjax.runtime import cli_flags

_FORMAT = flags.DEFINE_enum('format', None, formats.FORMATS, 'The layout of the download.',
                            required=True)
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Folder holding the download.', required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'Where the prepared dataset goes.')
_NAME = flags.DEFINE_string('name', None, "The prepared dataset's name; default: the format's.")
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Short side of the stored images, in pixels.',
                                  lower_bound=1)
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the grouped train/val/test split.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild the dataset even if it is prepared.')
_SKIP_BAD_IMAGES = flags.DEFINE_bool('skip_bad_images', False,
                                     'Leave out unreadable images (listed in skipped.csv).')
_LABEL_COLUMN = flags.DEFINE_string('label_column', None, 'isic_archive and csv: the label column.')
_LABEL_MAP = flags.DEFINE_string('label_map', None, 'A CSV of value,class rows; empty class drops.')
_IMAGE_COLUMN = flags.DEFINE_string('image_column', None, 'csv: the image column (default image).')
_GROUP_COLUMN = flags.DEFINE_string('group_column', None, 'csv: the lesion or patient column.')
_CSV = flags.DEFINE_string('csv', None, "csv: the labels file (default: the folder's only CSV).")
_MELANOMA_CLASS = flags.DEFINE_string('melanoma_class', None,
                                      'The class whose recall heads the report (default: mel/melanoma).')

SPLITS_FILENAME = 'splits.csv'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli_flags.check_folder('data_dir', _DATA_DIR.value)
  import tensorflow_datasets as tfds  # after flag parsing: --help stays fast
  from skinjax.data import handle
  from skinjax.data import prepared
  tfds.disable_progress_bar()  # progress-bar debris would bury the one line that matters
  cli_flags.quiet_tfds_warnings()
  name = _NAME.value or _FORMAT.value
  options = formats.Options(
      name=name, label_column=_LABEL_COLUMN.value, label_map=_LABEL_MAP.value,
      image_column=_IMAGE_COLUMN.value, group_column=_GROUP_COLUMN.value, csv_path=_CSV.value,
      melanoma_class=_MELANOMA_CLASS.value)
  dataset = handle.PreparedDataset(_DATA_DIR.value, name, _IMAGE_SIZE.value)
  try:
    prepared.check_name(name, _FORMAT.value)
    reused = storage.is_prepared(_DATA_DIR.value, name, _IMAGE_SIZE.value) and not _OVERWRITE.value
    prepared.prepare(_FORMAT.value, _MANUAL_DIR.value, _DATA_DIR.value, options=options,
                     short_side=_IMAGE_SIZE.value, overwrite=_OVERWRITE.value,
                     skip_bad_images=_SKIP_BAD_IMAGES.value)
    metadata, description, recorded = dataset.metadata, dataset.description, dataset.fingerprint
  except (ValueError, OSError) as error:
    logging.vlog(1, 'Traceback of the error below:', exc_info=True)
    sys.exit(f'error: {error}')
  labels, groups = metadata['label'], metadata['group']
  verb = 'is already prepared; reusing it (--overwrite rebuilds it)' if reused else 'prepared'
  print(f'{name} ({_FORMAT.value}, {len(labels)} images, short side {_IMAGE_SIZE.value}) {verb}: '
        f'{dataset.path}')
  counts = np.bincount(labels, minlength=description.num_classes)
  print('Classes: ' + ', '.join(f'{c} {n}' for c, n in zip(description.class_names, counts)))
  print(f'Melanoma class: {description.melanoma or "none"}; grouped by {description.group_key} '
        f'({len(set(groups))} groups); metadata columns: '
        f'{", ".join(description.metadata_columns) or "none"}')
  if description.challenge:
    print(f'Challenge submission format: {description.challenge.image_column},'
          + ','.join(description.challenge.columns))
  print(f'Labels sha256: {recorded["metadata_sha256"]}')
  if recorded['skipped_images']:
    print(f'Skipped {recorded["skipped_images"]} unreadable images, listed in '
          f'{os.path.join(dataset.path, storage.SKIPPED_FILENAME)}')
  print(f'Use it with --config.data.dataset={name} --config.data.data_dir={_DATA_DIR.value}'
        + ('' if _IMAGE_SIZE.value == storage.DEFAULT_SHORT_SIDE
           else f' --config.data.prepared_size={_IMAGE_SIZE.value}'))
  write_split(dataset, _SPLIT_SEED.value)


def write_split(dataset, seed: int) -> None:
  """Writes splits.csv beside the data, and shows what a per-image split would have leaked."""
  metadata, description = dataset.metadata, dataset.description
  labels, groups = metadata['label'], metadata['group']
  splits = splits_lib.make_splits(labels, groups, seed=seed)
  try:
    splits_lib.check_every_class_present(splits, labels, description.num_classes,
                                         description.class_names)
  except ValueError as e:
    print(f'warning: {e}')
  path = os.path.join(dataset.path, SPLITS_FILENAME)
  splits_lib.write_splits_csv(path, metadata, splits, description.group_column or 'image')
  print(f'Grouped split (60/20/20, seed {seed}): '
        + ', '.join(f'{n} {len(i)}' for n, i in splits.items()) + f'; wrote {path}')
  if description.group_column is None:
    return  # each image is its own group: nothing can leak
  comparisons = [('grouped', splits)]
  try:
    comparisons.append(('random_image (the study)', splits_lib.make_splits(
        labels, groups, seed=seed, method='random_image')))
  except ValueError as e:  # stratifying per image needs a few images of every class
    print(f'warning: no random_image split to compare with: {e}')
  print(f'Groups ({description.group_key}) shared across splits:')
  for method, method_splits in comparisons:
    report = splits_lib.leak_report(method_splits, groups)
    pairs = ', '.join(f'{pair} {n}' for pair, n in report['shared_lesions'].items())
    seen = report.get('test_images_with_lesion_in_train')  # None: a tiny dataset left test empty
    print(f'  {method}: {report["shared_lesions_total"]} ({pairs}); test images whose group is '
          f'in train: {"n/a (empty test split)" if seen is None else f"{seen:.1%}"}')


if __name__ == '__main__':
  cli_flags.run(main)

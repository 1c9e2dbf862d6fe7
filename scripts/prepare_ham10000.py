r"""Prepares HAM10000 from your download and writes the lesion-grouped 60/20/20 split.

  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 \
      --data_dir=~/tensorflow_datasets [--image_size=256] [--split_seed=0] \
      [--overwrite] [--skip_bad_images]

--manual_dir holds the download: the Kaggle folders, a flat folder of ISIC_*.jpg with
HAM10000_metadata.csv, or the zip file(s) as downloaded. The script prints the class
counts, writes splits.csv (image_id,lesion_id,dx,split) next to the prepared dataset, and
shows how many lesions a per-image split would have leaked across splits.

The dataset is built in a staging directory and renamed into place when complete, so an
interrupted run leaves nothing that training would accept. Running it again reuses the
prepared dataset (only splits.csv is rewritten) unless --overwrite is given; a failed
--overwrite leaves the previous dataset as it was.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
import numpy as np

from skinjax.data import splits as splits_lib
from skinjax.data.constants import CLASS_NAMES, NUM_CLASSES
from skinjax.data.ham10000 import Ham10000Error, fingerprint, is_prepared, load, prepare, skipped_images_path
from skinjax.runtime import cli_flags

_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Folder holding the HAM10000 download.', required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets', 'Where TFDS writes the prepared dataset.')
_IMAGE_SIZE = flags.DEFINE_integer('image_size', 256, 'Short side of the stored images, in pixels (never upscaled).',
                                  lower_bound=1)
_SPLIT_SEED = flags.DEFINE_integer('split_seed', 0, 'Seed of the lesion-grouped train/val/test split.')
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Rebuild the dataset even if it is prepared already.')
_SKIP_BAD_IMAGES = flags.DEFINE_bool(
    'skip_bad_images', False, 'Leave out images that cannot be read or decoded, and list them in '
    'skipped.csv next to the dataset, instead of stopping at the first one.')

SPLITS_FILENAME = 'splits.csv'


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  cli_flags.check_folder('data_dir', _DATA_DIR.value)
  cli_flags.quiet_tfds_warnings()
  reused = is_prepared(_DATA_DIR.value, _IMAGE_SIZE.value) and not _OVERWRITE.value
  try:
    builder = prepare(_MANUAL_DIR.value, _DATA_DIR.value, short_side=_IMAGE_SIZE.value,
                      overwrite=_OVERWRITE.value, skip_bad_images=_SKIP_BAD_IMAGES.value)
  except Ham10000Error as e:
    sys.exit(f'error: {e}')  # The message says what to do; a traceback would only bury it.
  _, metadata = load(_DATA_DIR.value, short_side=_IMAGE_SIZE.value)
  labels, lesions = metadata['label'], metadata['lesion_id']

  if reused:
    print(f'HAM10000 (short side {_IMAGE_SIZE.value}) is already prepared in {builder.data_dir}: '
          'reusing it (pass --overwrite to rebuild it).')
  else:
    print(f'Prepared {len(labels)} examples (short side {_IMAGE_SIZE.value}) in {builder.data_dir}')
  counts = np.bincount(labels, minlength=NUM_CLASSES)
  print('Class counts: ' + ', '.join(f'{name} {n}' for name, n in zip(CLASS_NAMES, counts)))
  try:
    recorded = fingerprint(_DATA_DIR.value, _IMAGE_SIZE.value)
  except FileNotFoundError as e:  # Prepared by older code: usable, but training cannot record it.
    print(f'warning: {e}')
  else:
    print(f'Metadata CSV sha256: {recorded["metadata_sha256"]}')
    if recorded['skipped_images'] or _SKIP_BAD_IMAGES.value:
      print(f'Skipped {recorded["skipped_images"]} unreadable images' + (
          f', listed in {skipped_images_path(_DATA_DIR.value, _IMAGE_SIZE.value)}'
          if recorded['skipped_images'] else ''))

  splits = splits_lib.make_splits(labels, lesions, seed=_SPLIT_SEED.value)
  try:
    splits_lib.check_every_class_present(splits, labels, NUM_CLASSES, CLASS_NAMES)
  except ValueError as e:
    print(f'warning: {e}')
  path = os.path.join(os.fspath(builder.data_dir), SPLITS_FILENAME)
  splits_lib.write_splits_csv(path, metadata, splits)
  print('Lesion-grouped split (60/20/20, seed {}): {}'.format(
      _SPLIT_SEED.value, ', '.join(f'{name} {len(indices)}' for name, indices in splits.items())))
  print(f'Wrote {path}')

  comparisons = [('lesion_grouped', splits)]
  try:
    comparisons.append(('random_image (the study)', splits_lib.make_splits(
        labels, lesions, seed=_SPLIT_SEED.value, method='random_image')))
  except ValueError as e:  # Stratifying per image needs a few images of every class.
    print(f'warning: no random_image split to compare with: {e}')
  print('Lesions shared across splits:')
  for method, method_splits in comparisons:
    report = splits_lib.leak_report(method_splits, lesions)
    pairs = ', '.join(f'{pair} {n}' for pair, n in report['shared_lesions'].items())
    seen = report.get('test_images_with_lesion_in_train')  # None: a tiny dataset left test empty.
    print(f'  {method}: {report["shared_lesions_total"]} ({pairs}); test images whose lesion is '
          f'in train: {"n/a (empty test split)" if seen is None else f"{seen:.1%}"}')

if __name__ == '__main__':
  cli_flags.run(main)

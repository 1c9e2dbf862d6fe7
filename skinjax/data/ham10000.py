"""HAM10000 under its own name in two calls, as scripts/prepare_ham10000.py prepares it.

Shorthands of `prepared.prepare('ham10000', ...)` and `handle.PreparedDataset`, which serve every
format; the HAM10000 download itself is read by skinjax/data/ham10000_download.py.
"""

from skinjax.data import formats
from skinjax.data import handle
from skinjax.data import prepared
from skinjax.data import storage


def prepare(manual_dir, data_dir, short_side: int = storage.DEFAULT_SHORT_SIDE, *,
            overwrite: bool = False, skip_bad_images: bool = False) -> handle.PreparedDataset:
  """Prepares the download in manual_dir as data_dir/ham10000/short{short_side}/ and opens it."""
  prepared.prepare('ham10000', manual_dir, data_dir, options=formats.Options(name='ham10000'),
                   short_side=short_side, overwrite=overwrite, skip_bad_images=skip_bad_images)
  return handle.PreparedDataset(data_dir, 'ham10000', short_side)


def load(data_dir, short_side: int = storage.DEFAULT_SHORT_SIDE):
  """(source, metadata): metadata as the handle's, with each image's group also as lesion_id."""
  dataset = handle.PreparedDataset(data_dir, 'ham10000', short_side)
  return dataset.source, {**dataset.metadata, 'lesion_id': dataset.metadata['group']}

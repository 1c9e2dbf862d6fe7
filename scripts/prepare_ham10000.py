r"""Prepares HAM10000 from your download: scripts/prepare_dataset.py --format=ham10000.

  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 \
      --data_dir=~/tensorflow_datasets [--image_size=256] [--split_seed=0] \
      [--overwrite] [--skip_bad_images]

--manual_dir holds the download: the Kaggle folders, a flat folder of ISIC_*.jpg with
HAM10000_metadata.csv, or the zip file(s) as downloaded. Every flag of prepare_dataset.py works
here too; see its docstring for what it prints and writes (the class counts, splits.csv and how
many lesions a per-image split would have leaked across splits).
"""

from absl import flags

import prepare_dataset  # scripts/ is on the path when a script runs
from skinjax.runtime import cli_flags

if __name__ == '__main__':
  flags.FLAGS.set_default('format', 'ham10000')
  cli_flags.run(prepare_dataset.main)

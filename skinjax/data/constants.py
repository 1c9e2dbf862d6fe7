"""HAM10000 facts for the modules that read HAM10000 itself: its download reader, the tests,
the HAM10000-shaped synthetic source and the benchmarks. Everything that serves any dataset
reads the classes from the dataset's description (skinjax/data/datasets.py) instead."""

from skinjax.data import datasets

# Alphabetical, as in the HAM10000 metadata and the study; label i is CLASS_NAMES[i].
CLASS_NAMES = datasets.HAM10000.class_names
NUM_CLASSES = len(CLASS_NAMES)
MELANOMA = datasets.HAM10000.melanoma

# The ISIC 2018 Task 3 and ISIC 2019 column orders (ground truth and submissions).
ISIC2018_COLUMNS = datasets.ISIC2018_COLUMNS
ISIC2019_COLUMNS = datasets.ISIC2019_COLUMNS

METADATA_COLUMNS = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex', 'localization')

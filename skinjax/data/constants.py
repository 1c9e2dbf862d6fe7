"""HAM10000 facts shared by the builder, the pipeline and the reports."""

# Alphabetical, as in the HAM10000 metadata and the study; label i is CLASS_NAMES[i].
CLASS_NAMES = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
NUM_CLASSES = len(CLASS_NAMES)
MELANOMA = 'mel'

# The ISIC 2018 Task 3 column order (ground truth and submissions); map to CLASS_NAMES by name.
ISIC2018_COLUMNS = ('MEL', 'NV', 'BCC', 'AKIEC', 'BKL', 'DF', 'VASC')
# ISIC 2019 ground truth: AK is HAM10000's akiec; SCC (invasive squamous cell carcinoma) and UNK
# have no HAM10000 class, so a model trained on it cannot be scored on them.
ISIC2019_COLUMNS = ('MEL', 'NV', 'BCC', 'AK', 'BKL', 'DF', 'VASC', 'SCC', 'UNK')
ISIC2019_TO_CLASS = {'MEL': 'mel', 'NV': 'nv', 'BCC': 'bcc', 'AK': 'akiec', 'BKL': 'bkl',
                     'DF': 'df', 'VASC': 'vasc'}

METADATA_COLUMNS = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex', 'localization')

DOWNLOAD_HELP = (
    'Download HAM10000 from the Harvard Dataverse (doi:10.7910/DVN/DBW86T) or from Kaggle '
    '(kmader/skin-cancer-mnist-ham10000), then prepare it with:\n'
    '  python scripts/prepare_ham10000.py --manual_dir=DOWNLOAD_DIR --data_dir={data_dir}'
)

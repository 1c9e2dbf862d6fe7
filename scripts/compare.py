r"""Compares finished runs: one table row and one group of bars per run.

  python scripts/compare.py W1 W2 ... [--out=DIR] [--tta=none|flip|flip_rot]

Writes DIR/comparison.md (arch, init, parameters, image size, epochs, training time, accuracy,
balanced accuracy, macro-F1, melanoma recall and macro AUC with 95% bootstrap intervals) and
DIR/comparison.png. DIR defaults to the folder that holds the runs. comparison.md first says what
is comparable: runs trained on different datasets sat different exams, so each training dataset
gets its own tables and verdicts, and no figure is ranked across them. Intervals come from
W/eval/test-best/ when scripts/evaluate.py has been run (resampled by lesion), else from the
training report. Each external set evaluate.py scored the runs on
(W/eval/external-<set name>-<set hash>-best/, or an older external-<csv name>-best/) gets a
section, named by the folder the set came from, and a panel per training dataset of its own.
--tta=flip|flip_rot reads evaluate.py's results of that TTA mode instead
(W/eval/test-best-tta_<mode>/ and so on), for every run.
"""

import os
import pathlib
import sys

from absl import app
from absl import flags

from skinjax.evaluation import compare
from skinjax.evaluation import tta
from skinjax.runtime import cli_flags

_OUT = flags.DEFINE_string('out', None, 'Output folder; default: the common parent of the runs.')
_TTA = flags.DEFINE_enum('tta', 'none', tta.TTA_MODES,
                         "Read evaluate.py's results of this TTA mode, for every run.")


def main(argv):
  workdirs = [pathlib.Path(w).expanduser() for w in argv[1:]]
  if not workdirs:
    raise app.UsageError('Pass the workdirs to compare: python scripts/compare.py W1 W2 ...')
  cli_flags.check_folder('out', _OUT.value)
  out = _OUT.value or os.path.commonpath([w.absolute().parent for w in workdirs])
  try:
    runs = compare.write_comparison(workdirs, out, _TTA.value)
  except ValueError as error:
    sys.exit(f'error: {error}')
  print((pathlib.Path(out) / 'comparison.md').read_text()
        + f'Wrote {pathlib.Path(out) / "comparison.md"} and comparison.png ({len(runs)} runs).')


if __name__ == '__main__':
  cli_flags.run(main)

"""Records tests/golden/two_phase_runs.json: tiny two-phase runs' losses and final parameters.

Run from the repository root (a few minutes on 2 cores), at the XLA level the test suite uses:
  XLA_FLAGS=--xla_backend_optimization_level=0 SKINJAX_CPU_KERNELS=onednn \
      python tests/golden/record_two_phase_runs.py [--check]
(--check compares today's trainer with the file, bit for bit, on the machine that recorded it.)

The file was first recorded with the trainer that still switched between two optimiser layouts at
the unfreezing step, and tests/test_phase_plan.py checked that the single layout trained the same.
It was recorded again when BatchNorm's training gradient was written out (skinjax.models.layers):
its float32 rounding differs from Flax's by about 1e-6 of a sum, which Adam turns into larger
differences of the small updates, so these tiny runs drifted apart by a few percent of a loss
within 10 steps, and by as much between XLA's -O0 (the suite's) and its default level. So it is
recorded at -O0 now, as the suite runs, and checks that the trainer keeps training the same.
The same trainer wrote tests/golden/legacy_runs.tar.gz: the work directories of runs stopped after
a checkpoint in phase 1 and in phase 2 (--legacy_runs, with tests.helpers.narrow_small_cnn); they check that
checkpoints in the old layouts still resume.
"""

import hashlib
import shutil
import json
import os
import pathlib
import platform
import re
import sys
import tarfile
import tempfile

import numpy as np
import orbax.checkpoint as ocp

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'tests'))

from helpers import narrow_small_cnn, tiny_config  # noqa: E402
from skinjax import kernels  # noqa: E402
from skinjax.training import train  # noqa: E402

GOLDEN = pathlib.Path(__file__).with_name('two_phase_runs.json')

# Each covers a branch of the optimiser: clipping chained in front (adamw) or not (sgd), every
# backbone block unfrozen or only the last one (a FROZEN group that never trains).
RUNS = {
    'adamw_clipped_all': {'train.freeze_backbone_epochs': 1, 'train.num_epochs': 3,
                          'train.backbone_lr_multiplier': 0.5},
    'sgd_unclipped_last_block': {'train.freeze_backbone_epochs': 1, 'train.num_epochs': 3,
                                 'train.optimizer': 'sgd', 'train.grad_clip_norm': 0.0,
                                 'train.learning_rate': 0.05, 'train.unfreeze': '1'},
}


def machine() -> str:
  """What decides the exact float32 bits: the CPU (its name, family and model: AMD's "AMD EPYC"
  names several generations), the native kernels and XLA's code generation level."""
  fields = {}
  for line in open('/proc/cpuinfo'):
    key, _, value = line.partition(':')
    fields.setdefault(key.strip(), value.strip())
  cpu = (f"{fields['model name']} (family {fields.get('cpu family')}, model {fields.get('model')})"
         if 'model name' in fields else platform.processor())
  level = re.search(r'--xla_backend_optimization_level=(\d+)', os.environ.get('XLA_FLAGS', ''))
  compiled = f'; XLA -O{level.group(1)}' if level else ''
  return f"{cpu}; {'onednn' if kernels.onednn_enabled() else 'xla'}{compiled}"


def run_summary(workdir: pathlib.Path) -> dict:
  """Every step's loss and, per parameter of the last checkpoint, its sum and sha256."""
  losses = {}
  for line in (workdir / 'metrics.jsonl').read_text().splitlines():
    record = json.loads(line)
    for offset, loss in enumerate(record.get('step_losses', [])):
      losses[record['step'] - len(record['step_losses']) + offset + 1] = loss
  latest = workdir / 'checkpoints' / 'latest'
  step = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
  params = ocp.PyTreeCheckpointer().restore(latest / str(step) / 'state')['params']
  leaves = {}

  def visit(node, path):
    if isinstance(node, dict):
      for key in sorted(node):
        visit(node[key], (*path, str(key)))
    else:
      array = np.asarray(node, np.float32)
      leaves['/'.join(p for p in path if p != 'value')] = {
          'sum': float(array.astype(np.float64).sum()),
          'sha256': hashlib.sha256(array.tobytes()).hexdigest()}

  visit(params, ())
  return {'losses': [losses[s] for s in sorted(losses)], 'params': leaves}


def record_runs() -> dict:
  summaries = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides in RUNS.items():
      workdir = pathlib.Path(tmp) / name
      train.train_and_evaluate(tiny_config(**overrides), str(workdir))
      summaries[name] = run_summary(workdir)
  return summaries


LEGACY_RUNS = {
    'phase1': {'train.freeze_backbone_epochs': 2, 'train.num_epochs': 3},
    'phase2': {'train.freeze_backbone_epochs': 1, 'train.num_epochs': 3},
}
LEGACY_STOP_STEPS = {'phase1': 9, 'phase2': 18}  # the end of epoch 1 and of epoch 2


def record_legacy_runs():
  """Work directories stopped right after a checkpoint (what a killed run leaves)."""
  from skinjax.runtime import checkpoint as ckpt
  original_save = ckpt.RunCheckpoints.save_latest

  class Stop(Exception):
    pass

  for name, overrides in LEGACY_RUNS.items():
    def save_then_stop(self, step, *args, stop_at=LEGACY_STOP_STEPS[name], **kwargs):
      original_save(self, step, *args, **kwargs)
      if step == stop_at:
        raise Stop
    ckpt.RunCheckpoints.save_latest = save_then_stop
    workdir = GOLDEN.with_name('legacy_runs') / name
    shutil.rmtree(workdir, ignore_errors=True)
    try:
      with narrow_small_cnn():
        train.train_and_evaluate(tiny_config(**overrides), str(workdir))
    except Stop:
      pass
    shutil.rmtree(workdir / 'tensorboard')
    (workdir / 'run.lock').unlink(missing_ok=True)
  folder = GOLDEN.with_name('legacy_runs')
  with tarfile.open(folder.with_suffix('.tar.gz'), 'w:gz') as archive:
    archive.add(folder, arcname=folder.name)
  shutil.rmtree(folder)


if __name__ == '__main__':
  if '--legacy_runs' in sys.argv:
    record_legacy_runs()
    sys.exit()
  if '--check' in sys.argv:  # today's trainer against the file, bit for bit where it was recorded
    recorded = json.loads(GOLDEN.read_text())
    if recorded['machine'] != machine():
      sys.exit(f'error: recorded on {recorded["machine"]!r}, this is {machine()!r}: bits differ')
    same = record_runs() == recorded['runs']
    print('bit-identical' if same else 'DIFFERENT')
    sys.exit(0 if same else 1)
  GOLDEN.write_text(json.dumps({'machine': machine(), 'runs': record_runs()}, indent=1) + '\n')
  print(f'Wrote {GOLDEN}')

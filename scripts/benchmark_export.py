r"""An export against its run: probabilities, balanced accuracy and inference speed, side by side.

  python scripts/benchmark_export.py --workdir=W --onnx=DIR --images_dir=IMAGES --labels_csv=CSV
      [--batch_size=32] [--rounds=7]

Prints one JSON object:
- `graph_max_abs_dp`: onnxruntime against JAX running the exported function on the same views
  (the conversion itself);
- per TTA mode, `max_abs_dp` and `mean_abs_dp` against the run's own predictions (evaluate.py's
  path, whose colour constancy is estimated on the whole image), the share of equal top classes
  and both balanced accuracies;
- images/s of onnxruntime, of the same function jitted as skinjax predicts (its CPU fast paths:
  oneDNN convolutions) and as it was traced for the export (plain XLA convolutions), on one batch
  of views, in alternating rounds (medians), and onnxruntime's ratio to skinjax.
"""

import json
import sys
import time

from absl import flags
from absl import logging
import jax
import numpy as np

from skinjax.evaluation import checkpoint_eval
from skinjax.evaluation import inference
from skinjax.export import graph
from skinjax.export import onnx_run
from skinjax.runtime import cli_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run.', required=True)
_ONNX = flags.DEFINE_string('onnx', None, 'Its export (scripts/export.py --out).', required=True)
_IMAGES_DIR = flags.DEFINE_string('images_dir', None, 'Labelled images.', required=True)
_LABELS_CSV = flags.DEFINE_string('labels_csv', None, 'Their labels.', required=True)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Images per timed call.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Alternating timed rounds.', lower_bound=1)


def agreement(run, model, data) -> dict:
  from sklearn import metrics as skm  # noqa: PLC0415 (only once there is something to score)
  found = {}
  for mode in ('none', 'flip_rot'):
    by_jax = run.predict(data.source, data.indices, tta_mode=mode)
    by_onnx = model.predict(data.source, data.indices, tta_mode=mode)
    found[mode] = {'max_abs_dp': float(np.abs(by_jax - by_onnx).max()),
                   'mean_abs_dp': float(np.abs(by_jax - by_onnx).mean()),
                   'same_top_class': float((by_jax.argmax(-1) == by_onnx.argmax(-1)).mean()),
                   'balanced_accuracy_jax': skm.balanced_accuracy_score(data.labels,
                                                                        by_jax.argmax(-1)),
                   'balanced_accuracy_onnx': skm.balanced_accuracy_score(data.labels,
                                                                         by_onnx.argmax(-1))}
  return found


def speeds(run, model, views: np.ndarray, rounds: int) -> dict:
  as_skinjax = jax.jit(graph.probabilities_fn(run, portable=False))
  as_traced = jax.jit(graph.probabilities_fn(run))
  calls = {'jax': lambda: as_skinjax(views).block_until_ready(),
           'jax_portable_ops': lambda: as_traced(views).block_until_ready(),
           'onnxruntime': lambda: model.probabilities(views)}
  for call in calls.values():
    call()
    call()  # compiled and warm
  rates = {name: [] for name in calls}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      for _ in range(3):
        call()
      rates[name].append(3 * len(views) / (time.perf_counter() - start))
  medians = {name: float(np.median(values)) for name, values in rates.items()}
  return {'images_per_s': medians, 'onnx_over_jax': medians['onnxruntime'] / medians['jax']}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    run = inference.load_run(_WORKDIR.value)
    model = onnx_run.open_export(_ONNX.value)
    data = checkpoint_eval.external_set(_IMAGES_DIR.value, _LABELS_CSV.value, run)
  except (ValueError, FileNotFoundError) as error:
    sys.exit(f'error: {error}')
  views = np.stack([model.eval_view(data.source[int(i)]['image']) for i in data.indices])
  exported = jax.jit(graph.probabilities_fn(run))
  by_jax = np.concatenate([np.asarray(exported(views[i:i + 64]))
                           for i in range(0, len(views), 64)])
  by_onnx = np.concatenate([model.probabilities(views[i:i + 64])
                            for i in range(0, len(views), 64)])
  result = {'images': len(views), 'graph_max_abs_dp': float(np.abs(by_jax - by_onnx).max()),
            **agreement(run, model, data),
            **speeds(run, model, views[:_BATCH_SIZE.value], _ROUNDS.value)}
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  cli_flags.run(main)

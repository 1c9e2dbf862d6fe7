r"""Exports a trained run's checkpoint as an ONNX model with its model card, for onnxruntime.

  pip install -e '.[export]'
  python scripts/export.py --workdir=W [--checkpoint=best] --out=DIR [--overwrite]

Writes DIR/model.onnx, DIR/model_card.json and DIR/MODEL_CARD.md. The graph takes what a deployer
has: uint8 RGB images, NHWC, at the run's evaluation size, any batch size (input `images`), and
gives the class probabilities (output `probabilities`). Inside it: the run's colour constancy (if
it uses it), the backbone's normalisation, the network and the softmax. Outside it: decoding,
resizing and centre-cropping, which the model card states as a rule. It is converted by jax2onnx
from the portable JAX path (plain convolutions and max-pools), not written by hand.

Check it with onnxruntime:
  python scripts/predict.py --onnx=DIR IMAGE_OR_DIR...
  python scripts/evaluate.py --onnx=DIR --images_dir=IMAGES --labels_csv=CSV

An existing, non-empty DIR is refused without --overwrite; the export is written beside it and
moved into place only when complete, so a failure leaves nothing half-written.
"""

import sys

from absl import app
from absl import flags
from absl import logging

from skinjax.evaluation import inference
from skinjax.export import onnx_file
from skinjax.runtime import cli_flags

_WORKDIR = flags.DEFINE_string('workdir', None, 'The training run to export.', required=True)
_CHECKPOINT = flags.DEFINE_string('checkpoint', 'best', 'best, latest or a step number.')
_OUT = flags.DEFINE_string('out', None, 'The folder to write the export into.', required=True)
_OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace an existing --out folder.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  out_dir = cli_flags.check_folder('out', _OUT.value)
  try:
    # Before the checkpoint is read: a refusal costs nothing.
    onnx_file.check_out_dir(out_dir, _OVERWRITE.value)
    onnx_file.import_jax2onnx()
    run = inference.load_run(_WORKDIR.value, _CHECKPOINT.value)
    exported = onnx_file.export(run, out_dir, overwrite=_OVERWRITE.value)
  except (ValueError, FileNotFoundError) as error:
    logging.vlog(1, 'Traceback of the error below:', exc_info=True)
    sys.exit(f'error: {error}')
  print(f'Exported the {run.checkpoint} checkpoint (step {run.step}) of {run.workdir} '
        f'({run.config.model.arch}, {run.eval_view.image_size}x{run.eval_view.image_size} uint8 '
        f'input) to {exported.out_dir}: {onnx_file.ONNX_FILE} {exported.onnx_bytes / 1e6:.1f} MB '
        f'in {exported.seconds:.1f} s, with model_card.json and MODEL_CARD.md.')


if __name__ == '__main__':
  cli_flags.run(main)

"""Writes a loaded run as DIR/model.onnx (converted by jax2onnx) with its model card.

The folder appears whole or not at all: everything is written into a hidden folder beside it,
which is renamed into place at the end, so an error or a Ctrl-C never leaves half an export.
"""

import dataclasses
import json
import os
import pathlib
import shutil
import time
import types

import numpy as np

from skinjax.export import graph
from skinjax.export import model_card

ONNX_FILE = 'model.onnx'
OPSET = 23
INPUT_NAME, OUTPUT_NAME = 'images', 'probabilities'
EXTRA_HINT = "pip install -e '.[export]'"
PORTABLE_NOTE = ('Convolutions and max-pools traced as lax.conv_general_dilated and nnx.max_pool: '
                 'ONNX Conv and MaxPool nodes, none of skinjax\'s CPU fast paths.')


class ExportError(ValueError):
  """An export that cannot be done as asked; the message says what to do instead."""


@dataclasses.dataclass(frozen=True)
class Exported:
  out_dir: pathlib.Path
  seconds: float
  onnx_bytes: int


def check_out_dir(out_dir: pathlib.Path, overwrite: bool):
  """Refuses, before any work, an --out that is a file, or a folder in use without --overwrite."""
  if out_dir.exists() and not out_dir.is_dir():
    raise ExportError(f'--out {out_dir} is a file; pass a folder for the export.')
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise ExportError(f'--out {out_dir} already exists and is not empty; pass --overwrite to '
                      'replace it, or another --out.')


def import_jax2onnx():
  try:
    import jax2onnx  # noqa: PLC0415 (an optional dependency: only the export needs it)
  except ImportError:
    raise ExportError(f'jax2onnx is not installed; install the export extra: {EXTRA_HINT}'
                      ) from None
  return jax2onnx


def export(run, out_dir, *, overwrite: bool = False) -> Exported:
  """model.onnx, model_card.json and MODEL_CARD.md of `run` (an inference.LoadedRun) in out_dir."""
  if run.metadata_encoder:
    # The graph's one input is the image; a second, encoded metadata, would need its encoding
    # (vocabularies, unknowns) in the model card, redone by every deployer.
    raise ValueError(f'{run.workdir} was trained with patient metadata '
                     f'({", ".join(run.metadata_encoder.fields)}), which an export cannot take '
                     'yet: export a run trained without config.model.metadata.')
  out_dir = pathlib.Path(out_dir).expanduser()
  check_out_dir(out_dir, overwrite)
  jax2onnx = import_jax2onnx()
  import onnx  # noqa: PLC0415 (installed with jax2onnx)
  started = time.perf_counter()
  size = run.eval_view.image_size
  # A dynamic batch: jax2onnx reads a string dimension as a symbol.
  images = types.SimpleNamespace(shape=('batch', size, size, 3), dtype=np.dtype(np.uint8))
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  staging = out_dir.with_name(f'.{out_dir.name}.partial-{os.getpid()}')
  shutil.rmtree(staging, ignore_errors=True)
  staging.mkdir()
  try:
    proto = jax2onnx.to_onnx(graph.probabilities_fn(run), [images],
                             model_name=run.config.model.arch, opset=OPSET,
                             input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # One file with the weights inside, which is what a deployer copies (jax2onnx's own writer
    # puts them in a model.onnx.data beside it); ONNX's protobuf limit is 2 GB, B7 is 0.26.
    onnx.save_model(proto, str(staging / ONNX_FILE))
    card = model_card.card(run, onnx_file=ONNX_FILE, opset=OPSET, portable_note=PORTABLE_NOTE)
    (staging / model_card.CARD_FILE).write_text(json.dumps(card, indent=2) + '\n')
    (staging / model_card.CARD_MARKDOWN).write_text(model_card.markdown(card))
    onnx_bytes = (staging / ONNX_FILE).stat().st_size
    _move_into_place(staging, out_dir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return Exported(out_dir, time.perf_counter() - started, onnx_bytes)


def _move_into_place(staging: pathlib.Path, out_dir: pathlib.Path):
  """Renames the finished export to out_dir; an old one (--overwrite) goes only once it is there."""
  if not out_dir.exists():
    staging.rename(out_dir)
    return
  old = out_dir.with_name(f'.{out_dir.name}.old')
  shutil.rmtree(old, ignore_errors=True)
  out_dir.rename(old)
  staging.rename(out_dir)
  shutil.rmtree(old, ignore_errors=True)

"""Exports one model of each architecture family and compares onnxruntime's output with JAX's.

  python tests/onnx_families.py IMAGES_DIR OUT_DIR ARCH...

Run by tests/test_export.py in a process of its own (compiled at FAST_COMPILE): each model gets
He-scaled random weights and random BatchNorm statistics (so that no layer is an identity and the
softmax is not saturated), is exported by onnx_file.export, and predicts the same real images
through both paths. Prints one JSON line per architecture.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from flax import nnx

from skinjax.data import datasets
from skinjax.data import pipeline
from skinjax.data.constants import CLASS_NAMES
from skinjax.evaluation import inference
from skinjax.export import graph
from skinjax.export import onnx_file
from skinjax.export import onnx_run
from skinjax.models import run_model as run_model_lib
from tests.helpers import tiny_config

IMAGE_SIZE = 96
NUM_IMAGES = 4


def random_state(state: nnx.State, rng: np.random.Generator) -> nnx.State:
  def value(path, leaf):
    names = [str(getattr(key, 'key', getattr(key, 'name', key))) for key in path]
    name = [n for n in names if n != 'value'][-1]  # the variable's own name, not its .value
    shape = leaf.shape
    if name in ('var', 'variance'):  # BatchNorm's, and the Normalization layer of EfficientNet
      return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
    if name in ('mean', 'bias'):
      return jnp.asarray(0.1 * rng.standard_normal(shape), jnp.float32)
    if name == 'scale':  # below 1: residual sums (ResNet, Xception) then stay of moderate size
      return jnp.asarray(rng.uniform(0.3, 0.6, shape), jnp.float32)
    fan_in = int(np.prod(shape[:-1])) or 1
    # The pooled features are small: a larger head makes logits of a few units, whose softmax is
    # neither uniform nor one-hot, and so shows any difference in the features.
    gain = 10.0 if 'head' in names else 1.0
    return jnp.asarray(gain * np.sqrt(1.0 / fan_in) * rng.standard_normal(shape), jnp.float32)
  return jax.tree_util.tree_map_with_path(value, state)


def loaded_run(arch: str, workdir: pathlib.Path, colour_constancy: bool) -> inference.LoadedRun:
  overrides = {'model.arch': arch, 'model.init': 'scratch', 'data.image_size': IMAGE_SIZE}
  if colour_constancy:
    overrides['data.colour_constancy'] = 'shades_of_grey'
  config = tiny_config(**overrides)
  description = datasets.DatasetDescription('synthetic', 'synthetic', CLASS_NAMES, 'mel',
                                            'lesion_id')
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(json.dumps(
      {**config.to_dict(), 'dataset_description': description.to_json()}))
  run_model = run_model_lib.RunModel(config, len(CLASS_NAMES))
  params, rest = run_model.abstract_state
  rng = np.random.default_rng(0)
  return inference.LoadedRun(workdir, config, 'best', 0, run_model.graphdef(),
                             random_state(params, rng), random_state(rest, rng),
                             run_model.normalise, description)


def main(images_dir, out_dir, *archs):
  paths = sorted(pathlib.Path(images_dir).glob('*.jpg'))[:NUM_IMAGES]
  view = pipeline.EvalView(IMAGE_SIZE)
  images = np.stack([view(path.read_bytes()) for path in paths])
  for i, arch in enumerate(archs):
    # The last family also runs the colour constancy inside the graph.
    run = loaded_run(arch, pathlib.Path(out_dir) / arch, colour_constancy=i == len(archs) - 1)
    exported = onnx_file.export(run, pathlib.Path(out_dir) / f'{arch}_onnx')
    onnx_probs = onnx_run.open_export(exported.out_dir).probabilities(images)
    jax_probs = np.asarray(graph.jax_probabilities(run, images))
    print(json.dumps({'arch': arch, 'colour_constancy': i == len(archs) - 1,
                      'max_abs_diff': float(np.abs(onnx_probs - jax_probs).max()),
                      'max_probability': float(jax_probs.max()),
                      'onnx_bytes': exported.onnx_bytes,
                      'op_types': sorted(op_types(exported.out_dir / onnx_file.ONNX_FILE))}),
          flush=True)


def op_types(path) -> set[str]:
  """Every node's op type, in the main graph and in any local functions."""
  model = onnx.load(str(path))
  nodes = list(model.graph.node) + [node for f in model.functions for node in f.node]
  local = {f.name for f in model.functions}
  return {node.op_type for node in nodes if node.op_type not in local}


if __name__ == '__main__':
  main(*sys.argv[1:])

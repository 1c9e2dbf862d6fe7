"""The EfficientNet skeleton keeps every variable of B0-B7 and Lite0-4 where it was.

Checkpoints, ported weights, the weight-mapping tables and the optimiser's masks all address
variables by path, so the paths, shapes, variable types and dtypes of each architecture are pinned
in tests/golden/efficientnet_variables.json, recorded from the separate B and Lite classes that the
skeleton replaced. Models are built with nnx.eval_shape: nothing is initialised.

Regenerate (only when a layout changes on purpose; a few minutes without the test's
fast_tracing): python -m tests.test_efficientnet_skeleton
"""

import collections
import json

import jax.numpy as jnp
import pytest
from flax import nnx

from skinjax.models import registry
from tests.helpers import REPO

GOLDEN = REPO / 'tests' / 'golden' / 'efficientnet_variables.json'
pytestmark = pytest.mark.usefixtures('fast_tracing')

ARCHS = tuple(arch for arch in registry.ARCHITECTURES if arch.startswith('efficientnet'))


def variables(model: nnx.Module) -> dict[str, str]:
  """Module path -> its variables, e.g. 'backbone/stem/bn' -> 'bias:Param(32) mean:BatchStat(32)
  ...', with the dtype added where it is not float32: one line a module keeps the file small."""
  modules = collections.defaultdict(list)
  for path, v in nnx.iter_graph(model):
    if isinstance(v, nnx.Variable):
      dtype = '' if v.dtype == jnp.float32 else f' {v.dtype}'
      shape = ','.join(map(str, v.shape))
      modules['/'.join(map(str, path[:-1]))].append(f'{path[-1]}:{type(v).__name__}({shape}){dtype}')
  return {module: ' '.join(sorted(names)) for module, names in modules.items()}


def describe(arch: str) -> dict:
  """The classifier the trainer builds, the ImageNet-top backbone, and the names both rely on."""
  classifier = nnx.eval_shape(lambda: registry.build_classifier(
      arch, num_classes=7, dropout_rate=0.3, rngs=nnx.Rngs(0)))
  # Every architecture here can be built with the 1000-class top, weights or not.
  top = nnx.eval_shape(lambda: registry.get_spec(arch).build_backbone(include_top=True,
                                                                      rngs=nnx.Rngs(0)))
  return {
      'classifier': variables(classifier),
      'imagenet_top_only': {path: value for path, value in variables(top).items()
                            if path.startswith(('predictions', 'top_dropout'))},
      'layer_groups': classifier.backbone.layer_groups(),
      'num_features': classifier.backbone.num_features,
      'convolution_kinds': sorted(map(list, registry.convolution_kinds(arch))),
  }


def test_the_golden_file_covers_all_thirteen_architectures():
  assert len(ARCHS) == 13
  assert sorted(json.loads(GOLDEN.read_text())) == sorted(ARCHS)


@pytest.mark.parametrize('arch', ARCHS)
def test_variables_and_names_are_unchanged(arch):
  expected = json.loads(GOLDEN.read_text())[arch]
  actual = json.loads(json.dumps(describe(arch)))  # tuples -> lists, as the file holds them
  for key in expected:
    assert actual[key] == expected[key], f'{arch}: {key} changed'
  assert actual.keys() == expected.keys()


if __name__ == '__main__':
  GOLDEN.write_text(json.dumps({arch: describe(arch) for arch in ARCHS}, indent=0,
                               sort_keys=True) + '\n')

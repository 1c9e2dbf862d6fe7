"""What the names in the published Keras files tell, across the three Keras generations that wrote them.

  Keras 1 (VGG16, Xception, the v0.2 ResNet50): 'block1_conv1_W_1:0', 'convolution2d_1_W:0',
      'batchnormalization_1_running_std:0' (it holds the moving variance), 'bn_conv1_gamma_1:0'
  Keras 2 / tf.keras (ResNet50, EfficientNet): 'conv1_conv/kernel:0', 'normalization/count:0'
  Keras 3's legacy writer: 'conv1_conv/kernel' (DepthwiseConv2D's kernel is just 'kernel')

Keras loads these files by order, never by name. skinjax does the same and reads a weight's role
from its name only to check it. The one file that must be read through its names is the v0.2
ResNet50: its layers come in another order than Keras' (see `v02_resnet50_keras_name`).
"""

import re

# The ending of a weight name -> the role it has in Keras 3.
_ROLES = {
    'W': 'kernel', 'b': 'bias', 'running_mean': 'moving_mean', 'running_std': 'moving_variance',
    **{role: role for role in ('kernel', 'bias', 'depthwise_kernel', 'pointwise_kernel', 'gamma',
                               'beta', 'moving_mean', 'moving_variance', 'mean', 'variance',
                               'count')},
}
_LONGEST_FIRST = sorted(_ROLES, key=len, reverse=True)  # 'moving_variance' before 'variance'


def weight_role(name: str) -> str | None:
  """'block1_conv1_W_1:0' -> 'kernel', 'bn_conv1_running_std_1:0' -> 'moving_variance';
  None when the name does not tell."""
  base = name.split(':')[0]
  if '/' in base:
    base = base.rsplit('/', 1)[1]
  else:
    base = re.sub(r'_\d+$', '', base)  # Keras 1 numbered each weight: 'conv1_W_1'
  for ending in _LONGEST_FIRST:
    if base == ending or base.endswith('_' + ending):
      return _ROLES[ending]
  return None


# The v0.2 ResNet50 (Keras 1): 'conv1', 'bn_conv1', 'res2a_branch2a', 'bn2a_branch2a', ...,
# 'res2a_branch1' (the shortcut), 'fc1000'. Its stage-opening blocks list 'res2a_branch2c' before
# 'res2a_branch1', where Keras 3's ResNet50 has the shortcut first: paired by order, stage 2
# would swap two kernels of the same shape.
_V02_BLOCK_LAYER = re.compile(r'(res|bn)([2-5])([a-f])_branch(2a|2b|2c|1)')
_V02_BRANCH_SUFFIX = {'1': '0', '2a': '1', '2b': '2', '2c': '3'}
_V02_OTHER_LAYERS = {'conv1': 'conv1_conv', 'bn_conv1': 'conv1_bn', 'fc1000': 'predictions'}


def v02_resnet50_keras_name(name: str) -> str | None:
  """'res2a_branch1' -> 'conv2_block1_0_conv', 'bn3b_branch2c' -> 'conv3_block2_3_bn'; None for
  a name outside that naming."""
  if name in _V02_OTHER_LAYERS:
    return _V02_OTHER_LAYERS[name]
  match = _V02_BLOCK_LAYER.fullmatch(name)
  if match is None:
    return None
  kind, stage, block, branch = match.groups()
  return (f'conv{stage}_block{ord(block) - ord("a") + 1}_{_V02_BRANCH_SUFFIX[branch]}_'
          f'{"conv" if kind == "res" else "bn"}')


def is_v02_resnet50(layer_names: list[str]) -> bool:
  return ('bn_conv1' in layer_names
          and all(v02_resnet50_keras_name(name) is not None for name in layer_names))

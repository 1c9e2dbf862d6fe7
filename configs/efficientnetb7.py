"""EfficientNetB7 fine-tuned from ImageNet weights on prepared HAM10000 (recipe: configs/imagenet_finetune.py).

Run:
  python -m skinjax.main --config=configs/efficientnetb7.py --workdir=runs/efficientnetb7 \
      --config.data.data_dir=~/tensorflow_datasets

Input 224x224 as in the study (the Keras default for EfficientNetB7 is 600).
Result: not run yet. It needs the Keras ImageNet weight port (config.model.init='imagenet'),
which this version does not have: until then it stops with a message saying so.
"""

from configs import imagenet_finetune


def get_config():
  return imagenet_finetune.get_config('efficientnetb7')

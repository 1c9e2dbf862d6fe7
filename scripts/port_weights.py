r"""Ports a Keras Applications weight file into a skinjax directory (Orbax checkpoint + manifest).

  python scripts/port_weights.py --arch=resnet50 \
      --keras_h5=~/.keras/models/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      --out=weights/resnet50_notop

Then train with --config.model.init=weights/resnet50_notop. A file with the ImageNet top is ported
with it (scripts/imagenet_predict.py can use it; fine-tuning leaves the top out). The files are
the ones Keras downloads into ~/.keras/models/; see --helpfull for the URL of each.
"""

import json
import pathlib
import sys

from absl import app
from absl import flags
from absl import logging

from skinjax.models import registry
from skinjax.runtime import cli_flags
from skinjax.weights import pretrained

_ARCH = flags.DEFINE_enum('arch', None, registry.PRETRAINED_ARCHITECTURES, 'Architecture.',
                          required=True)
_KERAS_H5 = flags.DEFINE_string('keras_h5', None, 'Keras legacy-h5 weight file.', required=True)
_OUT = flags.DEFINE_string('out', None, 'New directory for the ported weights.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every step of a save at INFO.
  cli_flags.check_folder('out', _OUT.value)
  try:
    manifest = pretrained.save_ported(pathlib.Path(_OUT.value), _ARCH.value,
                                      pretrained.existing_path(_KERAS_H5.value, flag='--keras_h5',
                                                                      want_file=True))
  except (ValueError, OSError) as error:  # WeightFileError is a ValueError
    sys.exit(f'error: {error}')
  print(json.dumps(manifest, indent=2))
  print(f'Ported {manifest["num_params"]:,} values into {_OUT.value}; train with '
        f'--config.model.arch={_ARCH.value} --config.model.init={_OUT.value}')


if __name__ == '__main__':
  cli_flags.run(main)

"""configs/cpu_transfer.py from scratch: the same EfficientNet-Lite0, resolution and epochs, no ImageNet.

The study's control: what ImageNet initialisation buys under the same CPU budget. Run:
  python -m skinjax.main --config=configs/cpu_transfer_scratch.py --workdir=runs/cpu_transfer_scratch \
      --config.data.data_dir=~/tensorflow_datasets

Only what makes no sense for random weights differs from cpu_transfer.py: no frozen-backbone
epoch (a head on random features learns little) and the backbone at the full learning rate
(a multiplier below 1 protects pretrained weights; random ones have nothing to protect). Every
epoch therefore trains the whole network, which costs a few minutes more than cpu_transfer.py's
cheap frozen first epoch: the control gets slightly more compute, not less.
Figures (2-core CPU, lesion-grouped split; best checkpoint = epoch 4 of 10, validation balanced
accuracy 0.603; evaluated as cpu_transfer.py is, with --tta=flip_rot; 95% CIs as there):

  test set, TTA                bal. acc.            macro-F1             mel. recall          macro AUC
  grouped test, flip_rot       0.577 [0.538, 0.618] 0.487 [0.449, 0.521] 0.493 [0.419, 0.572] 0.921
  isic2018_test_dev, flip_rot  0.419 [0.342, 0.497] 0.368 [0.305, 0.425] 0.510 [0.370, 0.652] 0.867
  grouped test, none           0.568 [0.524, 0.613] 0.477 [0.441, 0.511] 0.489 [0.416, 0.567] 0.916
  isic2018_test_dev, none      0.432 [0.356, 0.511] 0.375 [0.311, 0.432] 0.529 [0.382, 0.661] 0.861

ImageNet initialisation (cpu_transfer.py: 0.716 and 0.672 with the same TTA) is ahead by 0.14 on
the grouped split and 0.25 on the external images, far outside both intervals. Validation
balanced accuracy by epoch swung between 0.50 and 0.60 from epoch 4 on (0.14, 0.32, 0.45, 0.60,
0.50, 0.54, 0.60, 0.56, 0.58, 0.58): a 4M-parameter network from random weights is far from
converged in ten epochs of 6,008 images. TTA did not help it on validation (0.589 with flip_rot
against 0.603 without); it is applied because the control is evaluated exactly as the recipe is,
and the rows without TTA are there too. For the same reason config.eval.validated_tta stays the
recipe's flip_rot: it names the mode of the figures the two are compared by, not a choice made on
this control's own validation split.

Wall time: 48.1 min of training (report/timing.json), with evaluations and tests beside it in
epochs 1-4 and a 2-minute pause in epoch 3 (a benchmark needed the idle cores); idle epochs took
228-231 s, so about 39 minutes on the idle machine, 3 more than cpu_transfer.py's.
"""

from configs import cpu_transfer


def get_config():
  config = cpu_transfer.get_config()
  config.model.init = 'scratch'
  config.train.freeze_backbone_epochs = 0
  config.train.backbone_lr_multiplier = 1.0
  # Pinned to cpu_transfer.py as it was when this control ran (its figures above): colour
  # constancy and the larger evaluation views came to the recipe afterwards, and a rerun with
  # them (39 CPU minutes) did not fit that session. Both are kept off so that the figures stay
  # reproducible; the README's table says so.
  config.data.colour_constancy = 'none'
  config.data.eval_image_size = 0
  # Compared with cpu_transfer.py at its flip_rot (docstring), although flip_rot did not help the
  # control on validation: evaluate.py names this mode when another --tta is asked for.
  config.eval.validated_tta = 'flip_rot'
  return config

"""configs/cpu_transfer.py with augmentations that imitate other cameras: for images from elsewhere.

Run (from the repository root, as configs/cpu_transfer.py; the two external sets are the dev
halves beside this clone, or any labelled set of your own):
  python -m skinjax.main --config=configs/cpu_domains.py --workdir=runs/cpu_domains \
      --config.data.data_dir=~/tensorflow_datasets
  python scripts/evaluate.py --workdir=runs/cpu_domains --tta=flip_rot          # the test split
  python scripts/evaluate.py --workdir=runs/cpu_domains --tta=flip_rot \
      --images_dir=../shared/data/derm7pt_dev/images --labels_csv=../shared/data/derm7pt_dev/labels.csv

The recipe is configs/cpu_transfer.py (EfficientNet-Lite0 from ImageNet, 128 px, 1 frozen + 9
epochs, Shades of Grey, 176 px evaluation views) plus, on every training image, a random change
of what another dermoscope and its light would change: brightness, contrast, saturation, the
tone curve (gamma), hue, a colour cast (per-channel gains), and a Shades-of-Grey colour
constancy whose power is drawn from 2-10 instead of the fixed 6. Evaluation is unchanged.

Chosen among the levers docs/results.md ("Beyond one clinic") measured, on HAM10000's
validation split and the two dev sets (isic2018_test_dev, 453 ISIC 2018 Task 3 test images;
derm7pt_dev, 297 Derm7pt atlas cases from other clinics, 6 classes, no akiec); the HAM10000
test split was read only for the report. Balanced accuracy with --tta=flip_rot, [95% CIs,
1000 bootstrap resamples by lesion on HAM10000, by image on the external sets]:

  run                                      HAM val  HAM test             isic2018_test_dev    derm7pt_dev
  cpu_transfer.py                          0.705    0.747 [0.706, 0.785] 0.711 [0.637, 0.782] 0.470 [0.377, 0.557]
  + ISIC 2019 BCN/MSK (extra data)         0.640    0.675 [0.636, 0.709] 0.604 [0.531, 0.672] 0.425 [0.319, 0.528]
  + these augmentations (this config)      0.693    0.700 [0.655, 0.740] 0.693 [0.630, 0.756] 0.597 [0.516, 0.685]
  + both                                   0.606    0.624 [0.581, 0.665] 0.543 [0.467, 0.617] 0.377 [0.286, 0.484]
  + these augmentations at half strength   0.684    0.689 [0.654, 0.721] 0.671 [0.603, 0.733] 0.476 [0.374, 0.562]
  + these on half the views (probability)  0.678    0.725 [0.684, 0.764] 0.691 [0.619, 0.763] 0.569 [0.463, 0.668]
  this config on EfficientNet-Lite1         0.669    0.738 [0.695, 0.777] 0.632 [0.562, 0.700] 0.582 [0.482, 0.675]
  this config, train.ema_decay=0.995        0.697    0.686 [0.652, 0.720] 0.693 [0.628, 0.753] 0.589 [0.506, 0.668]

This config's other figures (HAM test / isic2018_test_dev / derm7pt_dev): macro-F1 0.591 /
0.607 / 0.518, melanoma recall 0.498 / 0.647 / 0.566, nevus recall 0.874 / 0.795 / 0.686 (the
recipe's on derm7pt_dev: 0.40, most other nevi called melanoma), macro AUC 0.943 / 0.939 / 0.882.
It is the only lever that moved Derm7pt, past 0.55; it costs 0.047 on the HAM10000 test split
and 0.018 on isic2018_test_dev, inside the intervals. Validation kept epoch 4 of 10 (0.693; by
epoch 0.50, 0.59, 0.65, 0.69, 0.65, 0.65, 0.64, 0.64, 0.65, 0.65). With the camera keys and the
random power on half the training views (config.data.augment.camera_probability=0.5; brightness,
contrast and saturation still on all) the HAM10000 test split was 0.025 higher, but
validation and both dev sets were lower, so every view gets them. On EfficientNet-Lite1
(--config.model.arch=efficientnet_lite1, about 42 min of training idle) validation and
isic2018_test_dev were lower again, so Lite0 stays. A moving average of the weights
(--config.train.ema_decay=0.995) changed no figure by more than 0.014, and its validation fell
after epoch 5 as this config's does after epoch 4. Not reached: 0.75 on the
HAM10000 test split and on isic2018_test_dev.

Trained again with today's code (the AVX-512 EPYC, 18.7 min of training, an evaluation beside
it for 2 minutes; validation 0.678 at epoch 8): 0.715 / 0.662 / 0.634 with evaluation views as
they come, and 0.715 / 0.665 / 0.649 with the views at the training images' resolution that
configs/cpu_transfer.py now sets and this config inherits (docs/results.md, "Images from sharper
cameras"): the spread between two runs of it is as large as that lever's effect here.
The best balance on the three sets is this run and configs/cpu_transfer.py's scored as one model
(python scripts/evaluate.py --workdir=runs/cpu_transfer,runs/cpu_domains --tta=flip_rot ...;
two runs, about 38 min of training idle): validation with flip_rot 0.707 (the two alone 0.683
and 0.701),
HAM10000 test 0.744 [0.701, 0.784], isic2018_test_dev 0.738 [0.675, 0.796], derm7pt_dev 0.623
[0.538, 0.703]. Two more draws of each config (--config.seed=1 and 2; 17.7-19.5 min each)
show that draw was the ensemble's luckiest on ISIC 2018: the pairs of the same seed give
0.744 / 0.760 / 0.732 on the test split, 0.738 / 0.730 / 0.672 on isic2018_test_dev and
0.623 / 0.577 / 0.523 on derm7pt_dev, a mean of 0.745 / 0.713 / 0.574 (this config alone:
0.719 / 0.665 / 0.586; docs/results.md, "How far one run is from the next"). Still short of
0.75 on the first two.

Wall time on the 2-core AMD EPYC: 38.1 min of training and report (report/timing.json), an
evaluation beside it for the first 15 minutes; idle epochs 178-199 s. Evaluation with
--tta=flip_rot: 2.4, 0.7 and 0.5 min for the three sets.
"""

from configs import cpu_transfer


def get_config():
  config = cpu_transfer.get_config()
  # At about half these strengths the Derm7pt gain was gone (docstring): strong is the point. The
  # Shades-of-Grey power drawn from 2-10 removes each training view's colour cast more or less
  # thoroughly, as another camera's light would leave it; evaluation keeps the fixed 6.
  config.data.augment.update(dict(brightness=0.2, contrast=0.3, saturation=0.3, gamma=0.3,
                                  hue=0.05, channel_gain=0.15, shades_of_grey_powers=(2.0, 10.0)))
  return config

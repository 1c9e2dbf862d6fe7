"""From-scratch HAM10000 recipe for a 2-core CPU: small_cnn at 64 px, 20 epochs, class-balanced sampling.

Run (from the repository root; 39.8 min on 2 otherwise idle CPU cores, preparation included):
  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 --data_dir=~/tensorflow_datasets
  python -m skinjax.main --config=configs/cpu_small.py --workdir=runs/cpu_small \
      --config.data.data_dir=~/tensorflow_datasets
  python scripts/evaluate.py --workdir=runs/cpu_small               # lesion-resampled 95% CIs
  python scripts/evaluate.py --workdir=runs/cpu_small --tta=flip_rot  # the validated TTA (below)

What it changes from configs/scratch_cnn.py (same small_cnn, widths 32-64-128-256, adamw 1e-3,
cosine after 1 warmup epoch, batch 32): 64 px instead of 128, so that 20 epochs fit the CPU;
class-balanced sampling (every class drawn equally often, with replacement, new draws each epoch)
and an unweighted loss instead of sqrt-inverse-frequency loss weights; a milder random resized
crop (area 0.5-1.0 instead of 0.35-1.0: at 64 px a small crop blows a few pixels up); no early
stopping (patience 0: the whole cosine schedule runs, and the best epoch by validation balanced
accuracy is the checkpoint that is reported). Chosen on validation figures, never on the test
split (see the ablation below).

Figures (2-core CPU, HAM10000 at 200x150, best checkpoint = epoch 17 of 20 by validation
balanced accuracy 0.638; epochs 17-20 all gave 0.631-0.638; test split 2,003 images; 95% CIs:
1000 bootstrap resamples by lesion, from scripts/evaluate.py):

  split                    bal. acc.            macro-F1             mel. recall          macro AUC  acc.
  lesion_grouped           0.662 [0.618, 0.702] 0.585 [0.545, 0.620] 0.605 [0.529, 0.682] 0.946      0.779
    + --tta=flip           0.657 [0.613, 0.698] 0.591 [0.549, 0.626] 0.605 [0.530, 0.688] 0.950      0.783
    --config.seed=1        0.661 [0.614, 0.706] 0.583 [0.543, 0.623] 0.565 [0.491, 0.644] 0.949      0.780
  random_image (leaky)     0.706 [0.662, 0.744] 0.560 [0.519, 0.593] 0.717 [0.656, 0.779] 0.938      0.674
  previous recipe (inverse-frequency loss weights, 30 epochs), the same two splits:
  lesion_grouped           0.615 [0.573, 0.658] 0.545 [0.501, 0.582] 0.623 [0.552, 0.701] 0.939      0.753
  random_image (leaky)     0.668 [0.628, 0.707] 0.528 [0.492, 0.561] 0.682 [0.616, 0.743] 0.921      0.648

The targets on the grouped split (balanced accuracy >= 0.65, macro-F1 >= 0.55, melanoma recall
>= 0.55) are met without TTA, and the intervals say how sure that is: each reaches below its
target (0.618, 0.545, 0.529), so another seed or another set of lesions may land under one.
A second training seed (same split; best epoch 17, validation 0.666) gave the same balanced
accuracy and macro-F1, and melanoma recall 0.565, just above its target.
The weakest classes are bkl (recall 0.37) and akiec (0.48); nv recall is 0.89. Flip TTA changes
nothing beyond noise here. On the leaky random_image split (best epoch 19, validation 0.688; it
ran beside the test suite, so its wall time says nothing) balanced accuracy rises by 0.04 and
melanoma recall by 0.11, while accuracy (0.674) and macro-F1 fall: that model calls more images
minority classes (nv recall 0.68 against 0.89). The previous recipe showed the same pattern.

How stable the figures are outside the split: the same 2,003 test images, fed through the
external-set path (evaluate.py --images_dir --labels_csv) after a Lanczos resize and JPEG
re-encoding (quality 95), gave balanced accuracy 0.656 at their own 200x150 (98.7% of the
predictions unchanged), 0.648 upscaled to HAM10000's original 600x450 (98.3%) and 0.637 shrunk
to 100x75 (95.7%). At 64 px a few dozen changed predictions in the small classes move balanced
accuracy by 0.01-0.02, so expect an external set to differ from the grouped test figure by at
least that much before any shift in cameras or populations.

Wall time, measured with `time`: preparation 10 s, training + report 39 min 39 s (20 epochs of
~119 s: training at 55-61 images/s, then validation and the checkpoint), on the 2-core AMD EPYC
of scripts/benchmark_train.py's figures in the README. The seed-1 run, on the same idle machine,
took 43 min 51 s (46-51 images/s): this shared machine's speed varies by 10%, so the margin
under 45 minutes is thin.

External images and TTA (2026-12-03, the run of the README's study, same config and seed; it
scored 0.672 on the grouped split where the run above scored 0.662): on isic2018_test_dev (453
images of the ISIC 2018 Task 3 test set) balanced accuracy 0.620 [0.537, 0.702] without TTA,
as measured before on those images (0.62), and 0.629 with --tta=flip_rot, which raised validation
balanced accuracy from 0.653 to 0.660 and the grouped test figure to 0.699. So evaluate with
  python scripts/evaluate.py --workdir=runs/cpu_small --tta=flip_rot [--images_dir=... --labels_csv=...]
The 8 views help this model a little everywhere (+0.01 external); the 4 flips did nothing above.
flip_rot is therefore the recipe's validated mode (config.eval.validated_tta); evaluate.py and
predict.py name it when another --tta is asked for.

Short ablation (2-core CPUs; test figures printed by each run's report, not used to choose):

  run                                             val bal. acc.  test bal. acc.  macro-F1  mel. rec.  time
  scratch_cnn.py, 64 px, 8 ep, sqrt_inverse_freq  0.539          0.521           0.477     0.565      9.5 min
  inverse_freq loss weights, 7 epochs             0.568          0.554           0.462     0.547      10.6 min*
  the same at 80 px, 5 epochs                     0.550          0.509           0.443     0.556      9.5 min
  inverse_freq loss weights, 30 epochs            0.639          0.615           0.545     0.623      45.3 min*
  balanced sampling, 20 epochs, first max-pool    0.635          0.669           0.600     0.668      41.6 min
  this recipe (balanced sampling, 20 epochs)      0.638          0.662           0.585     0.605      39.8 min
  (The first four rows ran on an earlier, faster development machine; * with a test suite
  running beside it.) At matched wall time 80 px (5 epochs) did no better on validation than
  64 px (7 epochs), so the budget went into epochs at 64 px. The 30-epoch inverse-frequency
  recipe, the previous version of this file, took ~67 s an epoch on that machine and would take
  an hour on this one, ~120 s an epoch. Balanced sampling reached the same validation balanced
  accuracy in 20 epochs as loss weighting did in 30, which is why it replaced it. The fifth row
  is this recipe trained with the first version of skinjax/models/cpu_conv.max_pool, whose
  gradient changed with the compilation; the current one sends each window's gradient to its
  first maximum, as XLA's own pool does. The two runs (same seed, the pool's gradient differing
  only where a window held ties or fusion rounded otherwise) differ by 0.007 in balanced accuracy
  and 0.06 in melanoma recall: a glimpse of the run-to-run spread.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.arch = 'small_cnn'
  config.data.image_size = 64
  config.data.split = 'lesion_grouped'
  config.data.augment.crop_scale = (0.5, 1.0)
  config.train.batch_size = 32
  config.train.num_epochs = 20
  config.train.learning_rate = 1e-3
  # Each class drawn equally often, with an unweighted loss: the same validation balanced accuracy
  # in 20 epochs as inverse-frequency loss weights in 30 (see the ablation above).
  config.train.balanced_sampling = True
  config.train.class_weighting = 'none'
  # The validation balanced accuracy swings by +-0.05 between epochs at the high learning rates,
  # so early stopping would cut the cosine schedule short; the best epoch is still the one kept.
  config.train.early_stopping.patience = 0
  # Chosen on validation (docstring: 0.653 -> 0.660 with the 8 views); other modes are warned about.
  config.eval.validated_tta = 'flip_rot'
  return config

"""From-scratch HAM10000 recipe for a 2-core CPU: small_cnn at 64 px, 30 epochs, inverse-frequency loss.

Run (from the repository root; about 35 min on 2 otherwise idle CPU cores, preparation included):
  python scripts/prepare_ham10000.py --manual_dir=~/Downloads/ham10000 --data_dir=~/tensorflow_datasets
  python -m skinjax.main --config=configs/cpu_small.py --workdir=runs/cpu_small \
      --config.data.data_dir=~/tensorflow_datasets
  python scripts/evaluate.py --workdir=runs/cpu_small               # lesion-resampled 95% CIs
  python scripts/evaluate.py --workdir=runs/cpu_small --tta=flip    # optional: 4 flipped views

What it changes from configs/scratch_cnn.py (same small_cnn, widths 32-64-128-256, adamw 1e-3,
cosine after 1 warmup epoch, batch 32): 64 px instead of 128 so 30 epochs fit the CPU;
class_weighting='inverse_freq' instead of 'sqrt_inverse_freq'; a milder random resized crop
(area 0.5-1.0 instead of 0.35-1.0: at 64 px a small crop blows a few pixels up); no early stopping
(patience 0: the full cosine schedule runs, and the best epoch by validation balanced accuracy is
the checkpoint that is reported). These were chosen on validation balanced accuracy from two
short probes (below), never on the test split.

Figures (2-core CPU, HAM10000 at 200x150, best checkpoint = epoch 25 of 30 by validation
balanced accuracy 0.639; test split 2,003 images; 95% CIs: 1000 bootstrap resamples by lesion,
from scripts/evaluate.py):

  split                    bal. acc.            macro-F1             mel. recall          macro AUC  acc.
  lesion_grouped           0.615 [0.573, 0.658] 0.545 [0.501, 0.582] 0.623 [0.552, 0.701] 0.939      0.753
    + --tta=flip           0.626 [0.581, 0.669] 0.558 [0.513, 0.593] 0.605 [0.535, 0.689] 0.942      0.758
  random_image (leaky)     0.668 [0.628, 0.707] 0.528 [0.492, 0.561] 0.682 [0.616, 0.743] 0.921      0.648
    + --tta=flip           0.667 [0.628, 0.706] 0.527 [0.493, 0.559] 0.686 [0.621, 0.749] 0.922      0.648

Targets on the grouped split were balanced accuracy >= 0.65, macro-F1 >= 0.55 and melanoma
recall >= 0.55: melanoma recall is met; macro-F1 only with flip TTA (0.558, 24 s more); balanced
accuracy is not (0.615; the CI reaches 0.658). The weak classes are bkl (recall 0.37), df (0.43)
and akiec (0.48). On the leaky random_image split (its best epoch 29) balanced accuracy rises by
0.05 and melanoma recall by 0.06, while accuracy (0.648) and macro-F1 fall: that model calls more
images minority classes (nv recall 0.66 against 0.86). One seed each; the leak shows mostly as
higher minority-class recall on test lesions whose other images were trained on.

Wall time: the grouped run took 45 min 17 s (`time` over prepare + train + report), but a test
suite ran beside it during epochs 1-20 (load average 3.5-4.8), stretching those epochs from
~67 s to ~100 s; epochs 21-30 ran alone at 66-73 s. Uncontended: 6 s preparation + 30 x ~67 s
(training at ~95 images/s, validation ~7 s) + ~1 min start, compilation and report = ~35 min.
The random_image run took 42.5 min (same recipe, all 30 epochs; best epoch 29, validation
balanced accuracy 0.639); a test suite (and this config's smoke test) ran beside it too,
during epochs 2-13; epochs 14-30 ran alone at 64-74 s.

Short ablation (same 2 cores; test figures printed by each run's report, not used to choose):

  run                                             val bal. acc.  test bal. acc.  macro-F1  mel. rec.  time
  scratch_cnn.py, 64 px, 8 ep, sqrt_inverse_freq  0.539          0.521           0.477     0.565      9.5 min
  probe A: this recipe, 7 epochs                  0.568          0.554           0.462     0.547      10.6 min*
  probe B: this recipe at 80 px, 5 epochs         0.550          0.509           0.443     0.556      9.5 min
  this recipe, 30 epochs                          0.639          0.615           0.545     0.623      45.3 min*
  (* slowed by a concurrent test suite.) At matched wall time 80 px (5 epochs, ~104 s each) did
  no better on validation than 64 px (7 epochs), so the budget went into epochs at 64 px.
"""

from configs import base


def get_config():
  config = base.get_config()
  config.model.arch = 'small_cnn'
  config.data.image_size = 64
  config.data.split = 'lesion_grouped'
  config.data.augment.crop_scale = (0.5, 1.0)
  config.train.batch_size = 32
  config.train.num_epochs = 30
  config.train.learning_rate = 1e-3
  config.train.class_weighting = 'inverse_freq'
  # The validation balanced accuracy swings by +-0.05 between epochs at the high learning rates,
  # so early stopping would cut the cosine schedule short; the best epoch is still the one kept.
  config.train.early_stopping.patience = 0
  return config

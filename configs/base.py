"""Base config: every other config imports `get_config()` from here and overrides a few fields.

Not meant to be run alone (it points at prepared HAM10000 with the small from-scratch CNN);
see configs/scratch_cnn.py, configs/demo.py and the backbone configs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.source = 'prepared'  # 'prepared' (TFDS ArrayRecord, scripts/prepare_*.py) | 'synthetic'
  # Which prepared dataset: its --name in scripts/prepare_dataset.py, the format's name by default
  # (ham10000, isic_archive, isic2019, isic2020, csv). Classes and groups come from it.
  data.dataset = 'ham10000'
  # More prepared datasets (in data_dir, at prepared_size) whose images join training, e.g.
  # ('isic2019_bcn_msk',). The main dataset's splits, classes and test split stay as they are;
  # each extra's classes map into the main dataset's by name (AK is AKIEC), or by label_map:
  # {extra class: main class, or '' to leave its images out}, e.g. {'scc': 'akiec'}.
  data.extra_train = ()
  data.label_map = {}
  data.extra_val_fraction = 0.0  # of each extra's groups, to validation (0: all to training)
  # How often each source's images are drawn, relative to each other: (main, *extra_train), e.g.
  # (1.0, 0.5); () draws every image alike (or, with train.balanced_sampling, every class alike).
  data.source_weights = ()
  data.data_dir = '~/tensorflow_datasets'
  data.prepared_size = 256  # short side the dataset was prepared at (--image_size of prepare)
  data.image_size = 224  # side of the square images the model sees
  # Side of the evaluation views (validation, test, evaluate.py, predict.py); 0: data.image_size.
  # Training's random crops enlarge lesions, so a network often does better when tested on
  # larger views than it trained on (Touvron et al. 2019, "Fixing the train-test resolution
  # discrepancy"); the classifier's global pooling takes any size.
  data.eval_image_size = 0
  # Evaluation and prediction only: shrink any image whose shorter side is longer than the
  # training images' (data.training_short_side) to theirs first, so that a sharper camera's
  # image shows no finer detail than the model learnt from. Images no larger are unchanged: all of
  # the main dataset's own when its images share one size, as HAM10000's do.
  data.match_training_resolution = False
  # The median shorter side of the main dataset's training images, in pixels: measured at the
  # start of training when 0 and match_training_resolution is on, and recorded in W/config.json.
  data.training_short_side = 0
  data.split = 'lesion_grouped'  # 'lesion_grouped' | 'random_image' (the study's leaky split)
  data.split_fractions = (0.6, 0.2, 0.2)
  data.split_seed = 0
  # Lesion-grouped k-fold cross-validation: with folds = K >= 2, the test split stays as above and
  # train + val are dealt into K grouped, class-stratified folds; fold i (0..K-1) is validation.
  # 0 keeps the one train/val split. scripts/cross_validate.py trains every fold.
  data.folds = 0
  data.fold = 0
  data.resize = 'center_crop'  # evaluation resize: 'center_crop' (keeps aspect) | 'squash'
  data.preprocessing = 'keras'  # 'keras' (the backbone's own) | 'minus_one_one' (the study's)
  # 'none' | 'shades_of_grey': each image's colour cast removed (the same at training, evaluation
  # and prediction), with the Minkowski power below; the ISIC winners used p=6.
  data.colour_constancy = 'none'
  data.shades_of_grey_power = 6.0
  data.num_workers = 2  # grain multiprocessing workers for training; 0 reads in the main process
  data.synthetic_examples = 700  # size of the synthetic source

  data.augment = augment = ml_collections.ConfigDict()
  augment.random_resized_crop = True
  augment.crop_scale = (0.35, 1.0)  # fraction of the image area kept by the random crop
  augment.crop_ratio = (3 / 4, 4 / 3)
  augment.hflip = True
  augment.vflip = True
  augment.rot90 = True  # dermoscopy has no canonical orientation
  augment.brightness = 0.1
  augment.contrast = 0.1
  augment.saturation = 0.1
  # Other cameras (all off at 0; augment.camera_jitter says what each does): the tone curve's
  # gamma in [1-g, 1+g], a hue turn of up to this fraction of the circle, per-channel gains in
  # [1-c, 1+c] (a colour cast), PIL's sharpness factor in [1-s, 1+s], a Gaussian blur of sigma up
  # to this many pixels.
  augment.gamma = 0.0
  augment.hue = 0.0
  augment.channel_gain = 0.0
  augment.sharpness = 0.0
  augment.blur = 0.0
  # With colour constancy on: (low, high) draws each training view's Shades of Grey power instead
  # of data.shades_of_grey_power; () keeps that power.
  augment.shades_of_grey_powers = ()
  # The fraction of training views that get the two above (the camera keys and the power range);
  # the others keep the camera's own rendering. 1.0: every view.
  augment.camera_probability = 1.0

  config.model = model = ml_collections.ConfigDict()
  model.arch = 'small_cnn'
  # 'scratch' | 'imagenet' (the Keras file in $SKINJAX_WEIGHTS_DIR or ~/.keras/models/) | PATH (an .h5
  # file or a directory from scripts/port_weights.py)
  model.init = 'scratch'
  model.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16'; parameters stay float32
  model.dropout_rate = 0.3
  # Patient metadata beside the image: some of ('age', 'sex', 'site'), read from the dataset's own
  # columns (skinjax/data/patient_metadata.py); () trains on images alone.
  model.metadata = ()
  # Training only: the chance that an image's metadata is all unknown, and else that each field is.
  model.metadata_dropout = 0.3

  config.train = train = ml_collections.ConfigDict()
  train.batch_size = 32  # global, across all devices and processes
  train.num_epochs = 30
  train.optimizer = 'adamw'  # 'adamw' | 'sgd'
  train.learning_rate = 1e-3
  train.momentum = 0.9  # sgd only
  train.nesterov = True  # sgd only
  train.weight_decay = 1e-4  # decoupled, on kernels only
  train.schedule = 'cosine'  # 'cosine' | 'constant', both after a linear warmup
  train.warmup_epochs = 1.0
  train.label_smoothing = 0.0
  # A moving average of the weights (and BatchNorm statistics), with this decay per step; 0: off.
  # With it on, validation, the best checkpoint and every evaluation use the average, and the
  # train step trains the weights themselves. Its first steps decay less, as TensorFlow's
  # ExponentialMovingAverage does: min(decay, (1 + n) / (10 + n)) after n steps.
  train.ema_decay = 0.0
  train.grad_clip_norm = 1.0  # 0 disables clipping
  train.class_weighting = 'none'  # 'none' | 'inverse_freq' | 'sqrt_inverse_freq'
  train.balanced_sampling = False  # draw each class equally often instead of weighting the loss
  # tau of the logit-adjusted loss: tau * log(class prior of the training stream) is added to the
  # logits inside the loss only, so the model's own logits aim at balanced accuracy while every
  # training image is drawn as often as the others. 0: off. Needs balanced_sampling off.
  train.logit_adjustment = 0.0
  train.freeze_backbone_epochs = 0  # phase 1: head only, backbone BatchNorm in inference mode
  train.unfreeze = 'all'  # phase 2: 'all' or the number of last backbone blocks to train, e.g. '2'
  train.backbone_lr_multiplier = 1.0
  train.log_every_steps = 10
  # `latest` is saved at the end of each epoch and every this many steps (0: only per epoch),
  # so that a killed run loses less; SIGTERM or Ctrl-C save it at the current step anyway.
  train.checkpoint_every_steps = 0
  train.eval_batch_size = 64
  # A step with a non-finite loss: False stops the run naming the step; True skips it (no
  # update, statistics kept) and counts the skips in metrics.jsonl and the report.
  train.skip_nonfinite = False
  # Resuming a workdir with another config or dataset is refused unless this says it is meant.
  train.allow_config_change = False

  train.early_stopping = es = ml_collections.ConfigDict()
  es.monitor = 'val_balanced_accuracy'  # any val_* metric of the epoch summary
  es.mode = 'max'  # 'max' | 'min' (use 'min' with val_loss)
  es.patience = 5  # epochs without improvement before stopping; 0 disables early stopping
  es.min_delta = 1e-3

  config.eval = evaluation = ml_collections.ConfigDict()
  # The test-time augmentation (scripts/evaluate.py --tta) the recipe chose on validation, if it
  # chose one: another mode is then warned about, since its figures were never checked.
  evaluation.validated_tta = ''
  # The report's figures (confusion_matrix.png, roc.png, reliability.png), from the trainer and
  # scripts/evaluate.py alike; false leaves them out, about a second less per report (sweeps,
  # tests). Every number is written either way.
  evaluation.figures = True
  return config

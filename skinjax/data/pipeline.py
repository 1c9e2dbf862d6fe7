"""grain pipelines: an endless augmented training stream and a padded, masked evaluation pass.

Both read any random-access source whose items are dicts with `image` (JPEG bytes or a uint8
array) and `label`: the prepared TFDS ArrayRecord source or the synthetic one.
"""

import ctypes
import dataclasses
import functools
import signal
import sys

from absl import flags
import grain
import ml_collections
import numpy as np

from skinjax.data import augment
from skinjax.data import patient_metadata


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """The picklable subset of `config.data.augment` that grain workers need."""
  random_resized_crop: bool
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  hflip: bool
  vflip: bool
  rot90: bool
  brightness: float
  contrast: float
  saturation: float
  # Other cameras (augment.camera_jitter) and random Shades of Grey powers; off by default.
  gamma: float = 0.0
  hue: float = 0.0
  channel_gain: float = 0.0
  sharpness: float = 0.0
  blur: float = 0.0
  shades_of_grey_powers: tuple[float, ...] = ()
  camera_probability: float = 1.0

  @classmethod
  def from_config(cls, cfg: ml_collections.ConfigDict) -> 'AugmentSpec':
    values = {f.name: cfg[f.name] for f in dataclasses.fields(cls)}
    return cls(**{**values, 'shades_of_grey_powers': tuple(values['shades_of_grey_powers'])})


class WeightedDraws:
  """Indices drawn with replacement in proportion to `weights`, new draws each epoch.

  Item i belongs to epoch i // len(indices); each epoch's draw is a pure function of (seed, epoch),
  so the stream is reproducible and grain can checkpoint it by position alone.
  """

  def __init__(self, indices: np.ndarray, weights: np.ndarray, seed: int, num_epochs: int):
    self.indices = np.asarray(indices)
    self.probs = np.asarray(weights, np.float64) / np.sum(weights)
    self.seed = seed
    self.num_epochs = num_epochs

  def __len__(self) -> int:
    return len(self.indices) * self.num_epochs

  def __getitem__(self, i: int) -> int:
    epoch, position = divmod(int(i), len(self.indices))
    return int(self._epoch_draw(epoch)[position])

  @functools.lru_cache(maxsize=2)
  def _epoch_draw(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng((self.seed, epoch))
    return rng.choice(self.indices, size=len(self.indices), p=self.probs)


class TrainTransform(grain.transforms.RandomMap):
  """An augmented view of one record; with a metadata encoder, its encoded metadata too."""

  def __init__(self, source, image_size: int, spec: AugmentSpec, resize_mode: str,
               colour_constancy_power: float | None = None,
               metadata_encoder: patient_metadata.MetadataEncoder | None = None,
               metadata_dropout: float = 0.0):
    self.source, self.image_size, self.spec, self.resize_mode = source, image_size, spec, resize_mode
    self.colour_constancy_power = colour_constancy_power
    self.metadata_encoder, self.metadata_dropout = metadata_encoder, metadata_dropout

  def random_map(self, index, rng: np.random.Generator):
    record = self.source[int(index)]
    image = augment.train_view(record['image'], self.image_size, self.spec, self.resize_mode, rng,
                               self.colour_constancy_power)
    example = {'image': image, 'label': np.int32(record['label']), 'mask': np.float32(1.0)}
    if self.metadata_encoder:
      # Drawn after the image's augmentation, which then matches an image-only run's.
      example['metadata'] = self.metadata_encoder.encode(patient_metadata.of_record(record), rng,
                                                         self.metadata_dropout)
    return example


@dataclasses.dataclass(frozen=True)
class EvalView:
  """How validation, evaluation and prediction see an image: one definition for all three.

  A training run's views follow its config.data: the evaluation size (config.data.eval_image_size,
  or the training size), the resize mode, the colour constancy (None when off) and the shorter
  side larger images are first shrunk to (None: taken as they come).
  """
  image_size: int
  resize_mode: str = 'center_crop'
  colour_constancy_power: float | None = None
  source_side: int | None = None

  @classmethod
  def from_config(cls, data_config: ml_collections.ConfigDict) -> 'EvalView':
    return cls(augment.eval_image_size(data_config), data_config.resize,
               augment.colour_constancy_power(data_config), augment.eval_source_side(data_config))

  def __call__(self, image) -> np.ndarray:
    """The uint8 view of one image (JPEG bytes or an array)."""
    return augment.eval_view(image, self.image_size, self.resize_mode, self.colour_constancy_power,
                             self.source_side)


class EvalTransform(grain.transforms.Map):
  """Position -1 is padding: a blank image with mask 0, so every real example counts once."""

  def __init__(self, source, indices: np.ndarray, view: EvalView,
               metadata_encoder: patient_metadata.MetadataEncoder | None = None):
    self.source, self.indices, self.view = source, indices, view
    self.metadata_encoder = metadata_encoder

  def map(self, position):
    position = int(position)
    if position < 0:
      blank = np.zeros((self.view.image_size, self.view.image_size, 3), np.uint8)
      example = {'image': blank, 'label': np.int32(0), 'mask': np.float32(0.0),
                 'position': np.int32(-1)}
      record = {}
    else:
      record = self.source[int(self.indices[position])]
      example = {'image': self.view(record['image']), 'label': np.int32(record['label']),
                 'mask': np.float32(1.0), 'position': np.int32(position)}
    if self.metadata_encoder:
      example['metadata'] = self.metadata_encoder.encode(patient_metadata.of_record(record))
    return example


class ProcessShard(grain.MapDataset):
  """Process p's contiguous block of every global batch of process_count * process_batch_size."""

  def __init__(self, parent: grain.MapDataset, process_index: int, process_count: int,
               process_batch_size: int):
    super().__init__(parent)
    self._offset = process_index * process_batch_size
    self._batch, self._global_batch = process_batch_size, process_batch_size * process_count
    self._length = len(parent) // self._global_batch * process_batch_size

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    global_batch, position = divmod(index, self._batch)
    return self._parent[global_batch * self._global_batch + self._offset + position]

  def __str__(self) -> str:
    return f'ProcessShard(offset={self._offset}, batch={self._batch}/{self._global_batch})'


def draw_weights(labels: np.ndarray, balanced: bool, source_weights: np.ndarray | None = None
                 ) -> np.ndarray | None:
  """Each training example's relative chance of being drawn, or None for a plain shuffle: every
  class equally likely when `balanced`, times its source's weight (combined.CombinedDataset)."""
  weights = 1.0 / np.bincount(labels)[labels] if balanced else None
  if source_weights is not None:
    weights = source_weights if weights is None else weights * source_weights
  return weights


def stream_class_prior(labels: np.ndarray, num_classes: int, balanced: bool,
                       source_weights: np.ndarray | None = None) -> np.ndarray:
  """How often each class comes in the training stream that `draw_weights` draws: the prior that
  a logit-adjusted loss (config.train.logit_adjustment) offsets. Uniform when `balanced` and
  every source weighs the same."""
  weights = draw_weights(labels, balanced, source_weights)
  if weights is None:
    weights = np.ones(len(labels))
  per_class = np.bincount(labels, weights=weights, minlength=num_classes)
  return per_class / per_class.sum()


def train_dataset(source, indices: np.ndarray, labels: np.ndarray, *, config: ml_collections.ConfigDict,
                  process_batch_size: int, num_epochs: int, process_index: int = 0,
                  process_count: int = 1, source_weights: np.ndarray | None = None
                  ) -> grain.IterDataset:
  """Shuffled (or drawn by class balance and source weights), repeated, augmented and batched
  training examples.

  The global stream, augmentation included, is fixed by the seed alone; each process then takes
  its contiguous part of every global batch, so any number of processes together see exactly
  the single-process batches.
  """
  seed = config.seed
  weights = draw_weights(np.asarray(labels), config.train.balanced_sampling, source_weights)
  if weights is not None:
    ds = grain.MapDataset.source(WeightedDraws(indices, weights, seed, num_epochs))
  else:
    ds = grain.MapDataset.source(np.asarray(indices)).shuffle(seed=seed).repeat(num_epochs)
  transform = TrainTransform(source, config.data.image_size,
                             AugmentSpec.from_config(config.data.augment), config.data.resize,
                             augment.colour_constancy_power(config.data),
                             patient_metadata.MetadataEncoder.from_config(config),
                             config.model.get('metadata_dropout', 0.0))
  # Augment before sharding: each example's random draw then depends on its global position only.
  ds = ds.random_map(transform, seed=seed + 1)
  ds = ProcessShard(ds, process_index, process_count, process_batch_size)
  ds = ds.batch(process_batch_size, drop_remainder=True).to_iter_dataset()
  if config.data.num_workers > 0:
    # grain's workers read absl flags; outside an absl app (tests, notebooks) use their defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.data.num_workers),
                        worker_init_fn=die_with_parent)
  return ds


def eval_dataset(source, indices: np.ndarray, view: EvalView, *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1, num_threads: int = 4,
                 metadata_encoder: patient_metadata.MetadataEncoder | None = None
                 ) -> grain.IterDataset:
  """One deterministic pass over `indices`, padded to whole global batches and masked; with
  `metadata_encoder`, each example's encoded metadata too (unknown where a record has none)."""
  positions = np.arange(len(indices))
  padding = -len(positions) % global_batch_size
  positions = np.concatenate([positions, np.full(padding, -1)])
  ds = grain.MapDataset.source(positions)[process_index::process_count]
  ds = ds.map(EvalTransform(source, np.asarray(indices), view, metadata_encoder))
  ds = ds.batch(global_batch_size // process_count)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=num_threads))


def die_with_parent(worker_index: int, worker_count: int):
  """Runs in each grain worker: it dies with the trainer, even by SIGKILL, and ignores Ctrl-C.

  Otherwise a killed trainer leaves its workers behind, blocked on a full queue, holding memory
  (and the pipes of whoever started the trainer) until someone kills them by hand.
  """
  del worker_index, worker_count
  # Ctrl-C reaches the whole process group: the trainer stops the workers itself, after saving,
  # instead of each worker printing its own KeyboardInterrupt traceback.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if sys.platform.startswith('linux'):
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)

"""A HAM10000-shaped synthetic source: same record fields, a learnable class-dependent pattern.

It lets the demo and the tests exercise the whole trainer without downloading anything. The class
frequencies and the several-images-per-lesion structure mimic HAM10000, so imbalance handling and
lesion-grouped splits behave as on the real data.
"""

import numpy as np

from skinjax.data.constants import CLASS_NAMES

# HAM10000's class counts (akiec, bcc, bkl, df, mel, nv, vasc), used as sampling weights.
HAM10000_CLASS_COUNTS = np.array([327, 514, 1099, 115, 1113, 6705, 142])


class SyntheticSource:
  """Random-access source of HAM10000-like records; item i is a pure function of (seed, i)."""

  def __init__(self, num_examples: int, image_size: tuple[int, int] = (64, 48), seed: int = 0):
    self.num_examples = num_examples
    self.width, self.height = image_size
    self.seed = seed
    rng = np.random.default_rng(seed)
    # Ensure every class appears at least a few times, even in tiny sources.
    probs = HAM10000_CLASS_COUNTS / HAM10000_CLASS_COUNTS.sum()
    labels = rng.choice(len(CLASS_NAMES), size=num_examples, p=probs)
    labels[: 3 * len(CLASS_NAMES)] = np.tile(np.arange(len(CLASS_NAMES)), 3)
    labels = rng.permutation(labels)
    # About 1.3 images per lesion, as in HAM10000; a lesion's images share its class.
    lesion_ids, lesion_of = [], np.empty(num_examples, dtype=object)
    order = np.argsort(labels, kind='stable')
    lesion = -1
    for position, index in enumerate(order):
      same_class = position > 0 and labels[order[position - 1]] == labels[index]
      if not (same_class and rng.random() < 0.25):
        lesion += 1
        lesion_ids.append(f'SYN_L{lesion:06d}')
      lesion_of[index] = lesion_ids[-1]
    self.metadata = {
        'image_id': np.array([f'SYN_{i:07d}' for i in range(num_examples)]),
        'lesion_id': lesion_of.astype(str),
        'dx': np.array([CLASS_NAMES[label] for label in labels]),
        'label': labels.astype(np.int64),
    }
    self.patient_metadata = _patient_metadata(labels, seed)

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    label = int(self.metadata['label'][index])
    return {
        'image': self._draw(label, np.random.default_rng((self.seed, index))),
        'label': label,
        'image_id': self.metadata['image_id'][index],
        'metadata': {column: values[index] for column, values in self.patient_metadata.items()},
    }

  def _draw(self, label: int, rng: np.random.Generator) -> np.ndarray:
    """A skin-toned background with a blob whose colour and stripe frequency encode the class."""
    h, w = self.height, self.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h / 2 + rng.normal(0, h / 10), w / 2 + rng.normal(0, w / 10)
    radius = min(h, w) * rng.uniform(0.2, 0.35)
    blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))
    hue = np.array(_CLASS_COLOURS[label], dtype=np.float32)
    stripes = 0.5 + 0.5 * np.sin((xx + yy) * (0.25 + 0.12 * label) + rng.uniform(0, 2 * np.pi))
    skin = np.array([224, 172, 150], dtype=np.float32)
    image = skin * (1 - blob[..., None]) + hue * blob[..., None] * (0.7 + 0.3 * stripes[..., None])
    image += rng.normal(0, 18, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _patient_metadata(labels: np.ndarray, seed: int) -> dict[str, np.ndarray]:
  """HAM10000's age, sex and localization columns, as text: the age depends on the class, so that
  metadata helps a model a little; about 5% of each column is missing, as HAM10000's are. Drawn
  from their own generator, so that the images and labels are those of the source without them."""
  rng = np.random.default_rng((seed, 1))
  ages = np.clip(np.round(rng.normal(40 + 5 * labels, 12) / 5) * 5, 0, 85)
  sites = np.array(['back', 'lower extremity', 'trunk', 'upper extremity', 'face', 'unknown'])
  columns = {
      'age': np.array([f'{age:.1f}' for age in ages]),
      'sex': rng.choice(np.array(['male', 'female']), size=len(labels)),
      'localization': sites[(labels + rng.integers(0, 3, size=len(labels))) % (len(sites) - 1)],
  }
  for column, unknown in (('age', ''), ('sex', 'unknown'), ('localization', 'unknown')):
    columns[column][rng.random(len(labels)) < 0.05] = unknown
  return columns


# Distinct but overlapping colours, so the task is learnable without being trivial.
_CLASS_COLOURS = [
    (150, 60, 60), (170, 90, 120), (120, 90, 60), (160, 120, 90),
    (60, 40, 40), (110, 70, 50), (180, 40, 80),
]

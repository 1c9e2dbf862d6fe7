"""A backbone plus a fresh classification head: the model the trainer fine-tunes."""

import jax
import jax.numpy as jnp
from flax import nnx

from skinjax.models.layers import dropout, global_average_pool


# Width of the metadata branch's output, beside the backbone's 1280-2560 pooled features: as in
# Gessert et al.'s ISIC 2019 solution, a small dense layer whose output joins the image features.
METADATA_FEATURES = 64


class Classifier(nnx.Module):
  """backbone -> global average pool -> dropout -> Linear, giving float32 logits.

  With `metadata_size` (patient_metadata.MetadataEncoder's vector), the encoded metadata goes
  through `metadata_branch` (Linear + ReLU) and joins the pooled image features before the head.

  Parameters live under `backbone/...`, `head/...` and `metadata_branch/...`; the optimiser
  trains the last two as new layers.
  Train/eval follow NNX: `model.train()` / `model.eval()`; `model.backbone.eval()` alone freezes
  the backbone's BatchNorm statistics and drop-connect while the head dropout keeps working.
  The head dropout holds no state; it sits beside `head` so that `head` is the plain Linear.
  """

  def __init__(self, backbone: nnx.Module, *, num_classes: int, dropout_rate: float,
               rngs: nnx.Rngs, metadata_size: int = 0):
    self.backbone = backbone
    self.head_dropout = nnx.Dropout(dropout_rate)
    # The head is tiny, so it runs in float32 whatever the backbone's compute dtype.
    features = backbone.num_features + (METADATA_FEATURES if metadata_size else 0)
    self.head = nnx.Linear(features, num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                           rngs=rngs)
    self.metadata_size = metadata_size
    if metadata_size:
      self.metadata_branch = nnx.Linear(metadata_size, METADATA_FEATURES, dtype=jnp.float32,
                                        param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, images: jnp.ndarray, metadata: jnp.ndarray | None = None, *,
               rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    """`images`: NHWC floats already normalised for the backbone (see `preprocessing.normalize`).

    `rngs` drives dropout and drop-connect; it is needed in training mode only. Passing it per
    call lets the training step derive keys from the step number, so a resume is exact. Pass an
    `nnx.Rngs` (e.g. `nnx.Rngs(dropout=key)`), not a bare key: each dropout site then draws its
    own key, whereas a bare key would give every drop-connect site the same mask.

    `metadata`: (N, metadata_size) encoded metadata, for a model built with metadata only.
    """
    return self.logits_from_features(self.backbone(images, rngs=rngs), metadata, rngs=rngs)

  def logits_from_features(self, features: jnp.ndarray, metadata: jnp.ndarray | None = None, *,
                           rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    """The head on the backbone's NHWC feature map (where Grad-CAM takes its gradients)."""
    pooled = global_average_pool(features)
    given = 0 if metadata is None else metadata.shape[-1]
    if given != self.metadata_size:
      raise ValueError(f'This classifier takes {self.metadata_size} metadata values per image; '
                       f'it was given {given or "none"}.')
    if self.metadata_size:
      branch = jax.nn.relu(self.metadata_branch(metadata.astype(jnp.float32)))
      pooled = jnp.concatenate([pooled.astype(jnp.float32), branch], axis=-1)
    return self.head(dropout(self.head_dropout, pooled, rngs))

"""A backbone plus a fresh classification head: the model the trainer fine-tunes."""

import jax.numpy as jnp
from flax import nnx

from skinjax.models.layers import dropout, global_average_pool


class Classifier(nnx.Module):
  """backbone -> global average pool -> dropout -> Linear, giving float32 logits.

  Parameters live under `backbone/...` and `head/...`, which is what the optimiser masks match.
  Train/eval follow NNX: `model.train()` / `model.eval()`; `model.backbone.eval()` alone freezes
  the backbone's BatchNorm statistics and drop-connect while the head dropout keeps working.
  The head dropout holds no state; it sits beside `head` so that `head` is the plain Linear.
  """

  def __init__(self, backbone: nnx.Module, *, num_classes: int, dropout_rate: float,
               rngs: nnx.Rngs):
    self.backbone = backbone
    self.head_dropout = nnx.Dropout(dropout_rate)
    # The head is tiny, so it runs in float32 whatever the backbone's compute dtype.
    self.head = nnx.Linear(backbone.num_features, num_classes, dtype=jnp.float32,
                           param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, images: jnp.ndarray, *, rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    """`images`: NHWC floats already normalised for the backbone (see `preprocessing.normalize`).

    `rngs` drives dropout and drop-connect; it is needed in training mode only. Passing it per
    call lets the training step derive keys from the step number, so a resume is exact. Pass an
    `nnx.Rngs` (e.g. `nnx.Rngs(dropout=key)`), not a bare key: each dropout site then draws its
    own key, whereas a bare key would give every drop-connect site the same mask.
    """
    return self.logits_from_features(self.backbone(images, rngs=rngs), rngs=rngs)

  def logits_from_features(self, features: jnp.ndarray, *,
                           rngs: nnx.Rngs | None = None) -> jnp.ndarray:
    """The head on the backbone's NHWC feature map (where Grad-CAM takes its gradients)."""
    return self.head(dropout(self.head_dropout, global_average_pool(features), rngs))

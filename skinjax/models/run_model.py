"""A run's classifier as its config describes it: one builder for training, inference and tests."""

import dataclasses
import functools
from typing import Callable

import jax.numpy as jnp
import ml_collections
from flax import nnx

from skinjax.data import patient_metadata
from skinjax.models import preprocessing
from skinjax.models import registry


@dataclasses.dataclass
class RunModel:
  """config.model's classifier with `num_classes` outputs.

  `build()` makes the real model (seeded by config.seed); `abstract` is its shape only, which
  is all that restoring a checkpoint or compiling a step needs.
  """
  config: ml_collections.ConfigDict
  num_classes: int

  def build(self) -> nnx.Module:
    model = self.config.model
    return registry.build_classifier(
        model.arch, num_classes=self.num_classes, dropout_rate=model.dropout_rate,
        dtype=jnp.dtype(model.dtype), rngs=nnx.Rngs(self.config.seed),
        metadata_size=self.metadata_encoder.size if self.metadata_encoder else 0)

  @property
  def metadata_encoder(self) -> patient_metadata.MetadataEncoder | None:
    """What turns an image's metadata into the model's input; None for an image-only model."""
    return patient_metadata.MetadataEncoder.from_config(self.config)

  @functools.cached_property
  def abstract(self) -> nnx.Module:
    return nnx.eval_shape(self.build)

  @property
  def abstract_state(self) -> tuple[nnx.State, nnx.State]:
    """(params, rest) as shapes: the nnx.Param leaves and everything else (BatchNorm statistics)."""
    _, params, rest = nnx.split(self.abstract, nnx.Param, ...)
    return params, rest

  def graphdef(self, set_mode: Callable[[nnx.Module], object] = lambda m: m.eval()) -> nnx.GraphDef:
    """The graph with the modes `set_mode` gives (BatchNorm and dropout modes are static)."""
    set_mode(self.abstract)
    return nnx.graphdef(self.abstract)

  @property
  def normalise(self) -> Callable:
    """The backbone's own input preprocessing, as the config chooses it."""
    return preprocessing.normaliser(registry.get_spec(self.config.model.arch).preprocessing,
                                    self.config)

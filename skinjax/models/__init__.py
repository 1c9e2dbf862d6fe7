"""Flax NNX models: classifier backbones and the architecture registry."""

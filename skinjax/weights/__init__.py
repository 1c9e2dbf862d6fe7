"""Keras Applications ImageNet weights -> skinjax's Flax models."""

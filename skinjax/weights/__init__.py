"""ImageNet weights (Keras .h5, PyTorch .pth, ported directories) -> skinjax's Flax models."""

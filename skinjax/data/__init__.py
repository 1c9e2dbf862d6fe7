"""Data: the HAM10000 TFDS builder, splits, the grain pipeline, augmentation and a synthetic source."""

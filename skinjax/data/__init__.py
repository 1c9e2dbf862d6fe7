"""Data: dataset descriptions, download formats, preparing with TFDS, the opened-once dataset handle,
splits, the grain pipeline, augmentation and a synthetic source."""

"""Scoring a model: batched prediction, loading a trained run, checkpoint and external-set
evaluation, the report and its metrics, test-time augmentation, Grad-CAM and run comparison.
"""

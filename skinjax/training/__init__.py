"""Training a run: the loop (train.py), optimiser and its masks, the workdir's guards, progress
logging and the config checks that run before anything is written.
"""

"""What every run needs beside the model: the device mesh and sharding, multi-host start-up,
the compilation cache, the jitted train and predict steps, Orbax run checkpoints, and the CLIs' flag parsing.
"""

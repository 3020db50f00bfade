"""Weights files: the VGG and ported weights on disk, the released upstream files and their hashes, porting
PyTorch checkpoints to Flax, and `python -m jaxtickets.weights fetch`."""

"""Quantized checkpoints: which module is stored how (config.py) and the tensors each format holds (formats.py)."""

"""Pruning and quantization."""

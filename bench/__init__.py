"""Benchmarks: `python -m bench.ops` (operator kernels vs torchvision)."""

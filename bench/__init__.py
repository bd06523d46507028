"""Benchmarks and measurement campaigns, each printing ratios against a reference run beside it.

- `python -m bench.ops`: operator kernels vs torchvision.ops.
- `python -m bench.shapes_vs_torchvision`: training ours vs torchvision's heads on the same data.
- `python -m bench.faults`: the kill -9 / bad input / checkpoint corruption campaign.
- `python -m bench.gpu_check`: the GPU benchmark matrix (`launch/gpu_check.sh` runs it).
- `python -m bench.export_speed`: eager vs each exported artifact, through main.py.
- `python main.py --mode=bench`: training and inference images/s, ours vs torchvision.
Results worth keeping go to `bench/results/` with date and hardware.
"""

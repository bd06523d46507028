"""Model building for every mode: `build(config, device, purpose)` and the fast paths.

    fast_paths   which `config.perf` switches apply (a pure function of config and device)
    model        build(): the model, its weights, the switches applied, returned as `Built`
    onednn       the CPU float32 oneDNN path
    cuda_graphs  CUDA graphs of the fixed-shape part
"""

from mrcnn.build.fast_paths import PURPOSES, FastPaths, fast_paths
from mrcnn.build.model import Built, build, resolve_weights

__all__ = ["PURPOSES", "Built", "FastPaths", "build", "fast_paths", "resolve_weights"]

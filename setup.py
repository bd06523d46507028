"""Builds the `ops._C` extension: `python setup.py build_ext --inplace` (see launch/setup.sh).

Environment:
  MRCNN_CUDA            auto | 0 | 1. auto builds the CUDA kernels when nvcc and a CUDA build of
                        torch are present; 1 requires them; 0 builds the CPU kernels only.
  TORCH_CUDA_ARCH_LIST  CUDA architectures, e.g. "9.0" (default "8.0;8.6;9.0;10.0").
  MAX_JOBS              parallel compile jobs (ninja).
  CUDA_HOME             CUDA toolkit; defaults to /usr/local/cuda-13.0 when that exists (torch
                        otherwise guesses it from the nvcc wrapper on PATH, one level too high).
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import sysconfig

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;9.0;10.0"
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"

# Must happen before torch.utils.cpp_extension is imported: it reads CUDA_HOME at import.
if not os.environ.get("CUDA_HOME") and os.path.isdir(DEFAULT_CUDA_HOME):
    os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)

import torch  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)


def want_cuda() -> bool:
    mode = os.environ.get("MRCNN_CUDA", "auto").strip().lower()
    nvcc = CUDA_HOME is not None and (
        os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")) or shutil.which("nvcc")
    )
    available = bool(nvcc) and torch.version.cuda is not None
    if mode in ("1", "true", "yes", "on"):
        if not available:
            raise RuntimeError(
                f"MRCNN_CUDA=1 but CUDA is not usable (CUDA_HOME={CUDA_HOME}, "
                f"torch.version.cuda={torch.version.cuda})"
            )
        return True
    if mode in ("0", "false", "no", "off"):
        return False
    return available


def pip_cuda_includes() -> list[str]:
    # The pip package nvidia/cu<major> (a dependency of torch) carries headers (cusparse.h, ...)
    # that torch's CUDA headers include but the toolkit folder here lacks.
    major = (torch.version.cuda or "").split(".")[0]
    dirs = site.getsitepackages() + [sysconfig.get_paths()["purelib"]]
    found = []
    for d in dirs:
        inc = os.path.join(d, "nvidia", f"cu{major}", "include")
        if major and os.path.isdir(inc) and inc not in found:
            found.append(inc)
    return found


def extension():
    csrc = os.path.join("ops", "csrc")
    sources = [os.path.join(csrc, "ops.cpp")] + sorted(
        glob.glob(os.path.join(csrc, "cpu", "*.cpp"))
    )
    cuda = want_cuda()
    archs = os.environ["TORCH_CUDA_ARCH_LIST"] if cuda else ""
    defines = [
        ("MRCNN_WITH_CUDA", "1" if cuda else "0"),
        ("MRCNN_CUDA_ARCHS", f'"{archs}"'),
        ("MRCNN_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    # -O3 lets GCC vectorise the inner loops; no FP contraction keeps results equal to
    # torchvision's (an fma rounds once where torchvision rounds twice).
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    if not cuda:
        return CppExtension(
            "ops._C",
            sources,
            define_macros=defines,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    nvcc = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
    return CUDAExtension(
        "ops._C",
        sources,
        define_macros=defines,
        include_dirs=pip_cuda_includes(),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    name="mrcnn-ops",
    version="0.1.0",
    description="Detection operators (NMS, RoIAlign, mask paste, mask targets) for Mask R-CNN",
    packages=[],
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)

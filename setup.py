"""Builds the `ops._C` extension: `python setup.py build_ext --inplace` (see launch/setup.sh).

Environment:
  MRCNN_CUDA            auto | 0 | 1. auto (default) builds the CUDA kernels only when a GPU is
                        visible (torch.cuda, else nvidia-smi) and nvcc and a CUDA build of torch
                        exist; 1 requires nvcc and a CUDA torch, GPU or not (a login node, CI);
                        0 builds the CPU kernels only.
  TORCH_CUDA_ARCH_LIST  CUDA architectures, e.g. "9.0". Default: those of the visible GPUs, or
                        "8.0;8.6;9.0;10.0" when none is visible (MRCNN_CUDA=1 on a login node).
  MAX_JOBS              parallel compile jobs (ninja); launch/setup.sh passes all cores.
  MRCNN_DEBUG_INFO      1 keeps debug info (-g) in the C++ objects; default off (compile time).
  CUDA_HOME             CUDA toolkit; defaults to /usr/local/cuda-13.0 when that exists (torch
                        otherwise guesses it from the nvcc wrapper on PATH, one level too high).
"""

from __future__ import annotations

import glob
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCHS = "8.0;8.6;9.0;10.0"
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"
FORCE_HINT = "MRCNN_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 bash launch/setup.sh"


class BuildConfigError(Exception):
    """A build switch with a value that cannot work: one line for the user, exit 2."""


@dataclass(frozen=True)
class Plan:
    cuda: bool
    archs: str  # TORCH_CUDA_ARCH_LIST to compile for ("" without CUDA)
    message: str  # one line for the user, "" when there is nothing to say


def _arch_list(caps) -> str:
    """'8.6;9.0' from compute capabilities such as [(9, 0), (8, 6), (9, 0)]."""
    return ";".join(f"{major}.{minor}" for major, minor in sorted(set(caps)))


def normalize_mode(mode: str) -> str:
    """'auto', '0' or '1' from MRCNN_CUDA (true/yes/on and false/no/off are accepted too)."""
    m = mode.strip().lower() or "auto"
    m = {"true": "1", "yes": "1", "on": "1", "false": "0", "no": "0", "off": "0"}.get(m, m)
    if m not in ("auto", "0", "1"):
        raise BuildConfigError(f"MRCNN_CUDA={mode!r}: expected auto, 0 or 1")
    return m


def plan(mode: str, nvcc: bool, torch_cuda: str | None, gpu_caps, env_archs: str) -> Plan:
    """What to build, from the switches and what this machine has. Pure: the probes are passed
    in, so the decision is tested without a GPU. `gpu_caps` lists the visible GPUs' compute
    capabilities; `env_archs` is TORCH_CUDA_ARCH_LIST as set ("" when unset)."""
    mode = normalize_mode(mode)
    if mode == "0":
        return Plan(False, "", "")
    usable = nvcc and torch_cuda is not None
    why_not = (f"torch {'has no CUDA' if torch_cuda is None else 'CUDA ' + torch_cuda} and "
               f"nvcc {'found' if nvcc else 'not found'} (set CUDA_HOME)")
    archs = env_archs.strip() or _arch_list(gpu_caps) or DEFAULT_ARCHS
    if mode == "1":
        if not usable:
            raise BuildConfigError(f"MRCNN_CUDA=1 but CUDA cannot be built: {why_not}")
        return Plan(True, archs, "")
    if not gpu_caps:
        return Plan(False, "", "MRCNN_CUDA=auto: no GPU visible, building the CPU kernels only; "
                               f"to build the CUDA kernels anyway (a login node): {FORCE_HINT}")
    if not usable:
        return Plan(False, "", f"MRCNN_CUDA=auto: a GPU is visible but {why_not}: building the "
                               "CPU kernels only")
    return Plan(True, archs, "")


def visible_gpu_caps(torch) -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs this process sees: torch.cuda's, else nvidia-smi's (a
    driver that torch's CUDA cannot use still means there is a GPU to build for)."""
    if torch.version.cuda is not None and torch.cuda.is_available():
        return [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return []  # GPUs hidden on purpose
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    caps = []
    for line in out.split():
        major, _, minor = line.strip().partition(".")
        if major.isdigit() and minor.isdigit():
            caps.append((int(major), int(minor)))
    return caps


def _cpp_extension():
    # CUDA_HOME must be set before torch.utils.cpp_extension is imported: it reads it at import.
    if not os.environ.get("CUDA_HOME") and os.path.isdir(DEFAULT_CUDA_HOME):
        os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME
    from torch.utils import cpp_extension

    return cpp_extension


def pip_cuda_includes(torch) -> list[str]:
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


def _fail(e: BuildConfigError):
    print(f"setup.py: {e}", file=sys.stderr)
    raise SystemExit(2) from None


def resolve_plan(torch, cpp_extension, mode: str) -> Plan:
    """plan() with this machine's probes; a switch that cannot work ends the build in one line."""
    home = cpp_extension.CUDA_HOME
    nvcc = home is not None and (os.path.exists(os.path.join(home, "bin", "nvcc"))
                                 or shutil.which("nvcc") is not None)
    env_archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    # GPUs are only probed when the answer matters (auto, or 1 without an arch list).
    probe = mode == "auto" or (mode == "1" and not env_archs.strip())
    caps = visible_gpu_caps(torch) if probe else []
    try:
        p = plan(mode, nvcc, torch.version.cuda, caps, env_archs)
    except BuildConfigError as e:
        _fail(e)
    if p.message:
        print(f"[setup.py] {p.message}", file=sys.stderr)
    if p.cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = p.archs  # what torch's nvcc flags are made of
        print(f"[setup.py] CUDA kernels for TORCH_CUDA_ARCH_LIST={p.archs}", file=sys.stderr)
    return p


def extension(torch, cpp_extension, p: Plan):
    csrc = os.path.join("ops", "csrc")
    sources = [os.path.join(csrc, "ops.cpp")] + sorted(
        glob.glob(os.path.join(csrc, "cpu", "*.cpp"))
    )
    defines = [
        ("MRCNN_WITH_CUDA", "1" if p.cuda else "0"),
        ("MRCNN_CUDA_ARCHS", f'"{p.archs}"'),
        ("MRCNN_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    # -O3 lets GCC vectorise the inner loops; no FP contraction keeps results equal to
    # torchvision's (an fma rounds once where torchvision rounds twice).
    cxx = ["-O3", "-ffp-contract=off", "-fopenmp"]
    # Python's own CFLAGS carry -g: debug info for torch's templates made each file cost ~2.4x
    # the compile time (box_iou.cpp: 24 s of CPU with -g, 10 s with -g0). MRCNN_DEBUG_INFO=1
    # keeps it, for gdb.
    if os.environ.get("MRCNN_DEBUG_INFO", "0").strip() != "1":
        cxx.append("-g0")
    if not p.cuda:
        return cpp_extension.CppExtension(
            "ops._C",
            sources,
            define_macros=defines,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    sources += sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
    nvcc = ["-O3", "--fmad=false", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(
        "ops._C",
        sources,
        define_macros=defines,
        include_dirs=pip_cuda_includes(torch),
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


def main() -> None:
    try:  # checked before torch loads, so a typo is answered by this one line alone
        mode = normalize_mode(os.environ.get("MRCNN_CUDA", "auto"))
    except BuildConfigError as e:
        _fail(e)
    from setuptools import setup

    cpp_extension = _cpp_extension()
    import torch

    p = resolve_plan(torch, cpp_extension, mode)
    setup(
        name="mrcnn-ops",
        version="0.1.0",
        description="Detection operators (NMS, RoIAlign, mask paste, mask targets) for Mask R-CNN",
        packages=[],
        ext_modules=[extension(torch, cpp_extension, p)],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    )


# Imported by the tests (tests/launch) for plan(); run by `python setup.py` and by pip.
if __name__ == "__main__":
    main()

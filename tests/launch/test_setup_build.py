"""The build decision of setup.py (MRCNN_CUDA, TORCH_CUDA_ARCH_LIST, the visible GPUs) and the
bookkeeping of launch/setup.sh (which requirements file, when to reinstall and rebuild, how many
compile jobs), on fakes: no compiler runs and no GPU is needed."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_setup_py():
    spec = importlib.util.spec_from_file_location("mrcnn_setup_py", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # defines functions only: setup() runs under __main__
    return mod


S = _load_setup_py()


def _exe(path, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


# ------------------------------------------------------------------ setup.py: plan()

def test_auto_without_gpu_builds_cpu_only_and_says_how_to_force():
    p = S.plan("auto", nvcc=True, torch_cuda="13.0", gpu_caps=[], env_archs="")
    assert not p.cuda and p.archs == ""
    assert "no GPU visible" in p.message
    assert "MRCNN_CUDA=1 TORCH_CUDA_ARCH_LIST=" in p.message
    assert "\n" not in p.message


def test_auto_with_gpus_builds_their_archs_sorted_once_each():
    p = S.plan("auto", True, "13.0", [(9, 0), (8, 6), (9, 0), (10, 0)], "")
    assert p.cuda and p.archs == "8.6;9.0;10.0" and p.message == ""


def test_an_arch_list_set_by_the_user_wins():
    assert S.plan("auto", True, "13.0", [(9, 0)], " 8.0;9.0 ").archs == "8.0;9.0"
    assert S.plan("1", True, "13.0", [(9, 0)], "10.0").archs == "10.0"


def test_auto_with_a_gpu_but_no_nvcc_or_cpu_torch_explains():
    for nvcc, tc in ((False, "13.0"), (True, None)):
        p = S.plan("auto", nvcc, tc, [(9, 0)], "")
        assert not p.cuda and "GPU is visible" in p.message


def test_force_without_gpu_keeps_the_default_archs():
    p = S.plan("1", True, "13.0", [], "")
    assert p.cuda and p.archs == S.DEFAULT_ARCHS
    assert S.plan("1", True, "13.0", [(12, 0)], "").archs == "12.0"


@pytest.mark.parametrize("nvcc,torch_cuda", [(False, "13.0"), (True, None), (False, None)])
def test_force_without_cuda_toolchain_is_refused(nvcc, torch_cuda):
    with pytest.raises(S.BuildConfigError, match="MRCNN_CUDA=1"):
        S.plan("1", nvcc, torch_cuda, [(9, 0)], "9.0")


def test_zero_never_builds_cuda_and_aliases_are_accepted():
    assert not S.plan("0", True, "13.0", [(9, 0)], "9.0").cuda
    assert S.plan(" ON ", True, "13.0", [], "9.0").cuda
    assert not S.plan("off", True, "13.0", [(9, 0)], "").cuda
    assert S.plan("", True, "13.0", [(9, 0)], "").cuda  # empty = auto


@pytest.mark.parametrize("bad", ["2", "maybe", "cuda"])
def test_unknown_mode_is_refused_naming_the_variable(bad):
    with pytest.raises(S.BuildConfigError, match="MRCNN_CUDA="):
        S.plan(bad, True, "13.0", [(9, 0)], "")


# ------------------------------------------------------------------ setup.py: GPU probes

def _fake_torch(cuda_version=None, caps=()):
    cuda = types.SimpleNamespace(
        is_available=lambda: bool(caps), device_count=lambda: len(caps),
        get_device_capability=lambda i: caps[i])
    return types.SimpleNamespace(version=types.SimpleNamespace(cuda=cuda_version), cuda=cuda)


def test_gpu_caps_from_torch_cuda(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert S.visible_gpu_caps(_fake_torch("13.0", [(9, 0), (8, 0)])) == [(9, 0), (8, 0)]


def test_gpu_caps_from_nvidia_smi_when_torch_sees_none(tmp_path, monkeypatch):
    _exe(tmp_path / "nvidia-smi", "#!/bin/sh\nprintf '9.0\\n8.6\\n[N/A]\\n'\n")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert S.visible_gpu_caps(_fake_torch(None)) == [(9, 0), (8, 6)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # hidden on purpose: none
    assert S.visible_gpu_caps(_fake_torch(None)) == []


def test_gpu_caps_empty_without_nvidia_smi_or_when_it_fails(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert S.visible_gpu_caps(_fake_torch(None)) == []
    _exe(tmp_path / "nvidia-smi", "#!/bin/sh\necho 'No devices were found'; exit 6\n")
    assert S.visible_gpu_caps(_fake_torch(None)) == []


def test_setup_py_refuses_a_bad_switch_in_one_line():
    env = {**os.environ, "MRCNN_CUDA": "sometimes"}
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "MRCNN_CUDA='sometimes'" in lines[0], r.stderr


# ------------------------------------------------------------------ requirement files

def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in open(os.path.join(ROOT, name)):
        line = line.split("#", 1)[0].strip()
        if line:
            pkg, _, ver = line.partition("==")
            pins[pkg.strip().lower()] = ver.strip()
    return pins


def test_torch211_requirements_differ_only_where_torch_211_needs_it():
    main, alt = _pins("requirements.txt"), _pins("requirements-torch2.11.txt")
    assert alt["torch"] == "2.11.0" and alt["torchvision"] == "0.26.0"
    differ = {k for k in main.keys() | alt.keys() if main.get(k) != alt.get(k)}
    assert differ == {"torch", "torchvision", "setuptools"}, differ
    assert int(alt["setuptools"].split(".")[0]) < 82  # torch 2.11.0's cap


# ------------------------------------------------------------------ launch/setup.sh

def _fake_repo(tmp_path):
    """A repository with setup.sh, a fake virtualenv whose python logs each call, and a fake
    nvidia-smi that prints $FAKE_GPUS."""
    root = tmp_path / "repo"
    (root / "launch").mkdir(parents=True)
    (root / "ops" / "csrc").mkdir(parents=True)
    with open(os.path.join(ROOT, "launch", "setup.sh")) as f:
        (root / "launch" / "setup.sh").write_text(f.read())
    (root / "setup.py").write_text("# build script\n")
    (root / "ops" / "csrc" / "ops.cpp").write_text("// v1\n")
    (root / "requirements.txt").write_text("torch==2.14.1\n")
    (root / "requirements-torch2.11.txt").write_text("torch==2.11.0\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.log"
    _exe(venv / "bin" / "python", f"""#!/usr/bin/env bash
echo "$* MAX_JOBS=${{MAX_JOBS:-}}" >> {log}
if [ "$1" = setup.py ]; then touch ops/_C.fake.so; fi
""")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _exe(bindir / "nvidia-smi", '#!/bin/sh\n[ -n "$FAKE_GPUS" ] && echo "$FAKE_GPUS" && exit 0\n'
                                "exit 9\n")
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "MRCNN_VENV": str(venv), "HOME": str(tmp_path)}
    return root, log, env


def _setup_sh(root, log, env, **extra):
    log.write_text("")
    r = subprocess.run(["bash", str(root / "launch" / "setup.sh")], env={**env, **extra},
                       capture_output=True, text=True, timeout=60)
    calls = [c for c in log.read_text().splitlines() if not c.startswith("-c ")]
    return r, calls


def test_setup_sh_installs_builds_once_and_rebuilds_on_each_change(tmp_path):
    root, log, env = _fake_repo(tmp_path)
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    r, calls = _setup_sh(root, log, env)
    assert r.returncode == 0, r.stderr
    assert any(f"-r {root}/requirements.txt" in c for c in calls), calls
    assert [c for c in calls if c.startswith("setup.py")] == [
        f"setup.py -q build_ext --inplace MAX_JOBS={nproc}"]
    assert _setup_sh(root, log, env)[1] == []  # nothing changed: nothing done
    # Another requirements file: reinstall and rebuild (another torch, another ABI).
    r, calls = _setup_sh(root, log, env, MRCNN_REQUIREMENTS="requirements-torch2.11.txt")
    assert r.returncode == 0, r.stderr
    assert any(f"-r {root}/requirements-torch2.11.txt" in c for c in calls), calls
    assert any(c.startswith("setup.py") for c in calls), calls
    env["MRCNN_REQUIREMENTS"] = "requirements-torch2.11.txt"
    assert _setup_sh(root, log, env)[1] == []
    # A GPU appears (built on a login node, run on a GPU node): rebuild, no reinstall.
    r, calls = _setup_sh(root, log, env, FAKE_GPUS="9.0")
    assert [c.split(" MAX_JOBS")[0] for c in calls] == ["setup.py -q build_ext --inplace"]
    env["FAKE_GPUS"] = "9.0"
    # A source change rebuilds; MAX_JOBS set by the user is passed through.
    (root / "ops" / "csrc" / "ops.cpp").write_text("// v2\n")
    r, calls = _setup_sh(root, log, env, MAX_JOBS="3")
    assert calls == ["setup.py -q build_ext --inplace MAX_JOBS=3"], calls


def test_setup_sh_refuses_a_missing_requirements_file(tmp_path):
    root, log, env = _fake_repo(tmp_path)
    r, calls = _setup_sh(root, log, env, MRCNN_REQUIREMENTS="requirements-torch9.txt")
    assert r.returncode == 2 and calls == []
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(r"MRCNN_REQUIREMENTS.*requirements-torch9\.txt", lines[0])

"""launch/gpu_check.sh and bench/gpu_check.py without a GPU: the check stops at the first
failure and says so, keeps to its time budget, writes its logs where the device returns them,
runs the headline figures first, keeps what was measured when a run hangs, and asks main.py only
for config keys that exist."""

from __future__ import annotations

import ast
import json
import os
import stat
import subprocess
import sys

import pytest

from bench import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "launch", "gpu_check.sh")


def _sh(tmp_path, *args, path_prefix="", **env):
    out = tmp_path / "out"
    e = {"PATH": f"{path_prefix}/usr/bin:/bin", "HOME": str(tmp_path), "OUT": str(out), **env}
    r = subprocess.run(["bash", SCRIPT, *args], env=e, capture_output=True, text=True,
                       timeout=120)
    return r, out


def _summary(out) -> str:
    return (out / "00-summary.txt").read_text()


def test_stops_at_the_first_step_without_a_gpu_driver(tmp_path):
    r, out = _sh(tmp_path)
    assert r.returncode == 1
    s = _summary(out)
    assert "STOP: no usable GPU" in s and "env: rc=" in s
    assert "build" not in s and sorted(os.listdir(out)) == ["00-summary.txt", "01-env.log"]
    assert "nvidia-smi" in (out / "01-env.log").read_text()


def test_stops_when_torch_sees_no_cuda_even_if_nvidia_smi_answers(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    smi = fake / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771 MiB, 580.159.04, 9.0'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    r, out = _sh(tmp_path, path_prefix=f"{fake}:", GPU_CHECK_PYTHON=sys.executable)
    assert r.returncode == 1
    assert "STOP: no usable GPU" in _summary(out)
    log = (out / "01-env.log").read_text()
    assert "NVIDIA H200" in log and "cuda available: False" in log
    assert not (out / "02-build.log").exists()


def _wheel(path, name: str, version: str) -> None:
    """A minimal pure-Python wheel holding one empty module."""
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)


def test_device_flow_sees_the_carried_wheels_then_stops_at_a_failed_build(tmp_path):
    """The GPU machine's steps with stand-ins (nvidia-smi, a python that says CUDA works):
    the wheels are installed and importable, ninja is found, and a build that cannot work
    (no nvcc) stops the check there."""
    repo = tmp_path / "repo"
    (repo / "launch").mkdir(parents=True)
    (repo / ".whl" / "ninja").mkdir(parents=True)
    for f in ("launch/gpu_check.sh", "setup.py"):
        (repo / f).write_text(open(os.path.join(ROOT, f)).read())
    _wheel(repo / ".whl" / "gcfake-0.1-py3-none-any.whl", "gcfake", "0.1")
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (
            ("nvidia-smi", "#!/bin/sh\necho 'NVIDIA H200, 143771 MiB, 580.159.04, 9.0'\n"),
            ("python", '#!/bin/bash\nif [ "$1" = -c ] && [[ "$2" == *"cuda available"* ]]; '
                       'then echo "cuda available: True"; exit 0; fi\n'
                       f'exec {sys.executable} "$@"\n')):
        (fake / name).write_text(text)
        (fake / name).chmod(0o755)
    site = tmp_path / "site"
    r = subprocess.run(["bash", str(repo / "launch" / "gpu_check.sh")], cwd=repo,
                       env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path),
                            "OUT": str(tmp_path / "out"), "CUDA_HOME": "/nonexistent",
                            "GPU_CHECK_PYTHON": str(fake / "python"),
                            "GPU_CHECK_SITE": str(site)},
                       capture_output=True, text=True, timeout=300)
    out = tmp_path / "out"
    s = _summary(out)
    assert r.returncode == 1, s
    for ok in ("env: rc=0", "deps: rc=0", "ninja: rc=0", "STOP: the ops build failed"):
        assert ok in s, s
    assert "ops:" not in s and "headline" not in s
    env_log = (out / "01-env.log").read_text()
    assert f"gcfake 0.1 from {site}" in env_log and "missing: none" in env_log
    assert "MRCNN_CUDA=1 but CUDA cannot be built" in (out / "02-build.log").read_text()


def test_a_step_without_time_left_is_not_started(tmp_path):
    r, out = _sh(tmp_path, GPU_CHECK_BUDGET_S="12")
    assert r.returncode == 1
    s = _summary(out)
    assert "env: not run" in s and "STOP" in s
    assert not (out / "01-env.log").exists()


def test_unknown_argument_is_one_line_and_exit_2(tmp_path):
    r, _ = _sh(tmp_path, "--gpu")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--gpu" in r.stderr


# ------------------------------------------------------------------ bench/gpu_check.py

def test_headline_runs_come_first_with_the_fast_paths():
    for cpu in (False, True):
        runs = gpu_check.plan(cpu)
        assert [r["set"] for r in runs[:2]] == ["headline"] * 2
        assert {r["set"] for r in runs[2:]} == {"rest"}
        train, infer = runs[0], runs[1]
        assert (train["mode"], train["dtype"], infer["mode"], infer["dtype"]) == (
            "train", "bfloat16", "infer", "bfloat16")
        assert train["cuda_graphs"] and train["channels_last"] and infer["cuda_graphs"]
        assert len({r["name"] for r in runs}) == len(runs)
    gpu, cpu = gpu_check.plan(False), gpu_check.plan(True)
    assert (gpu[0]["batch"], gpu[1]["batch"]) == (16, 8)
    assert sum(r["cap_s"] for r in gpu if r["set"] == "headline") <= 330  # the shell's cap
    assert [c["cap_s"] for c in cpu] == [g["cap_s"] * gpu_check.CPU_SLOWDOWN for g in gpu]
    shell = open(SCRIPT).read()
    assert "step headline 330 " in shell
    assert f"cap=$((cap * {gpu_check.CPU_SLOWDOWN}))" in shell


@pytest.mark.parametrize("cpu", [False, True])
def test_every_override_names_an_existing_key_with_a_value_of_its_type(cpu):
    from configs import r50_fpn_1x

    config = r50_fpn_1x.get_config()
    for run in gpu_check.plan(cpu):
        argv = gpu_check.overrides(run, cpu, "/tmp/w")
        assert argv[:3] == [f"--config={gpu_check.CONFIG}", "--mode=bench", "--workdir=/tmp/w"]
        for a in argv[3:]:
            key, _, text = a[len("--config."):].partition("=")
            node = config
            for part in key.split("."):
                node = node[part]  # KeyError: a key main.py would refuse
            value = text if isinstance(node, str) else ast.literal_eval(text)
            assert type(value) is type(node), (key, text)
        d = dict(a[len("--config."):].split("=", 1) for a in argv[3:])
        assert d["device"] == ("cpu" if cpu else "cuda")
        assert d["perf.cuda_graphs"] == str(run["cuda_graphs"] and not cpu)
        assert d.get("perf.onednn") == (None if cpu else "False")
        if not cpu and run["set"] == "headline":
            assert d["bench.image_size"] == "(800, 1333)" and d["perf.pad_to"] == "(800, 1344)"


FAKE_MAIN = '''
import json, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
batch = int(args["--config.bench.batch_size"])
mode = args["--config.bench.mode"]
if mode == "train" and args["--config.perf.channels_last"] == "False":
    time.sleep(60)  # a run that hangs
if mode == "infer" and args["--config.bench.dtypes"] == "('float32',)":
    sys.exit(3)  # a run that fails
os.makedirs(args["--workdir"], exist_ok=True)
json.dump({"variant": "v", "padded_size": [800, 1344], "hardware": "fake", "runs": [
    {"mode": mode, "ours": {"images_per_s": 10.0 * batch, "peak_mem_mb": 1.5}}]},
    open(os.path.join(args["--workdir"], "bench.json"), "w"))
print("fake bench", mode, batch)
'''


def test_runs_in_order_keep_results_past_a_hang_and_a_failure(tmp_path, monkeypatch):
    fake = tmp_path / "fake_main.py"
    fake.write_text(FAKE_MAIN)
    plan = gpu_check.plan
    monkeypatch.setattr(gpu_check, "plan", lambda cpu: [dict(r, cap_s=5) for r in plan(cpu)])
    out, log = tmp_path / "r.json", tmp_path / "r.log"
    common = ["--out", str(out), "--log", str(log), "--main", str(fake)]
    assert gpu_check.main(common + ["--set", "headline", "--budget-s", "100"]) == 0
    head = json.loads(out.read_text())["runs"]
    assert [r["name"] for r in head] == ["train_bf16_fast", "infer_bf16_fast"]
    assert head[0]["images_per_s"] == 160.0 and head[0]["target_images_per_s"] == 200.0
    assert head[1]["images_per_s"] == 80.0 and head[1]["peak_mem_mb"] == 1.5
    # The rest is appended to the same JSON; a hang and a failure cost their own run only.
    assert gpu_check.main(common + ["--set", "rest", "--budget-s", "100"]) == 1
    runs = {r["name"]: r for r in json.loads(out.read_text())["runs"]}
    assert len(runs) == len(gpu_check.plan(False))
    assert runs["train_bf16_nchw"].get("timed_out") and "images_per_s" not in runs[
        "train_bf16_nchw"]
    assert runs["infer_fp32_tf32"]["rc"] == 3
    assert runs["train_fp32_tf32"]["images_per_s"] == 80.0  # after the hang, still measured
    text = log.read_text()
    assert "== train_bf16_fast" in text and "fake bench train 16" in text
    lines = gpu_check.summary_lines({"runs": list(runs.values())})
    assert lines[0].startswith("train_bf16_fast: 160.0 img/s")
    assert any("train_bf16_nchw: no figure (timed out)" in ln for ln in lines)


def test_no_run_is_started_without_time_for_it(tmp_path):
    out = tmp_path / "r.json"
    rc = gpu_check.main(["--out", str(out), "--log", str(tmp_path / "l"), "--budget-s", "10",
                         "--main", "/nonexistent.py"])
    runs = json.loads(out.read_text())["runs"]
    assert rc == 0 and len(runs) == len(gpu_check.plan(False))
    assert all(r["skipped"] == "no time left in the budget" for r in runs)

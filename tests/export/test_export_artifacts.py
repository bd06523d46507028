"""--mode=export end to end on a tiny model: .pt2, ONNX and AOTInductor artifacts, their parity
against eager, sidecars, loading without the repository, the C++ runner.

Slow (minutes of tracing and compiling on a CPU): marked slow. The tiny model is the shapes
tiny network at test sizes 160 / 256 px, so every pyramid level of the exported program keeps
at least 2 cells (mrcnn/export/program.py).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mrcnn.export import load_artifact, parity, runner
from mrcnn.export.predictor import Predictor
from mrcnn.export.wrapper import DeployModel

pytestmark = pytest.mark.slow
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _export_config(tiny_config, tiny_model, workdir, formats):
    cfg = tiny_config.copy_and_resolve_references()
    cfg.input.min_size_test, cfg.input.max_size_test = 160, 256
    cfg.export.formats = formats
    cfg.export.parity_val_images = 0
    weights = os.path.join(workdir, "weights.pth")
    torch.save({"model": tiny_model.state_dict()}, weights)
    cfg.init.weights, cfg.init.format = weights, "native"
    return cfg


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_config, tiny_model):
    workdir = str(tmp_path_factory.mktemp("export"))
    cfg = _export_config(tiny_config, tiny_model, workdir, ("pt2", "onnx"))
    return cfg, workdir, runner.run(cfg, workdir, "cpu")


def _eager(cfg, tiny_model):
    return Predictor(DeployModel(tiny_model, cfg.input).eval())


def test_export_writes_artifacts_within_tolerance(exported):
    cfg, workdir, result = exported
    for fmt in ("pt2", "onnx"):
        res = result["artifacts"][fmt]
        assert res["passed"], res
        assert os.path.isfile(res["path"]) and not os.path.basename(res["path"]).startswith("tmp")
        side = json.load(open(res["path"] + ".json"))
        assert side["format"] == fmt and side["config"] == cfg.name
        assert [c["name"] for c in side["categories"]] == ["square", "circle", "triangle"]
        assert side["parity"]["passed"] and side["parity"]["figures"]["detections"] > 0
        assert "torch" in side["versions"]
    # The torch program runs our kernels on the same graph: bit for bit here.
    fig = result["artifacts"]["pt2"]["parity"]
    assert fig["max_box_px"] == 0.0 and fig["max_score"] == 0.0 and fig["min_mask_iou"] == 1.0


def test_artifacts_match_eager_on_new_mixed_batches(exported, tiny_model):
    cfg, workdir, result = exported
    eager = _eager(cfg, tiny_model)
    # Batch 1 and a batch of 3 mixing sizes and orientations, other seeds than the export's.
    batches = [parity.synthetic_images([(150, 210)], seed=11),
               parity.synthetic_images([(120, 200), (230, 140), (120, 200)], seed=12)]
    for fmt in ("pt2", "onnx"):
        predictor = load_artifact(result["artifacts"][fmt]["path"])
        tol = parity.ONNX_TOLERANCES if fmt == "onnx" else parity.TORCH_TOLERANCES
        fig = parity.measure(eager, predictor, batches, tol, **parity.cut_of(cfg))
        assert fig["detections"] > 0
        assert parity.passes(fig, tol), (fmt, fig)
        out = predictor(batches[1])
        assert [tuple(d["masks"].shape[-2:]) for d in out] == [(120, 200), (230, 140), (120, 200)]


def test_artifact_rejects_a_too_small_image(exported):
    _, _, result = exported
    predictor = load_artifact(result["artifacts"]["pt2"]["path"])
    with pytest.raises(ValueError, match="canvas"):
        predictor([torch.zeros((3, 20, 400), dtype=torch.uint8)])  # resized to 12 x 256


def test_failed_parity_is_not_published(exported, tiny_model, tmp_path, monkeypatch):
    cfg, workdir, result = exported
    tmp = tmp_path / "tmp-model.pt2"
    shutil.copyfile(result["artifacts"]["pt2"]["path"], tmp)
    cfg = cfg.copy_and_resolve_references()
    cfg.export.score_tol = -1.0  # nothing can pass
    res = runner.check_and_publish("pt2", str(tmp), _eager(cfg, tiny_model),
                                   [parity.synthetic_images([(160, 200)])], cfg, [], None)
    assert not res["passed"] and res["path"].endswith(".rejected")
    assert not (tmp_path / "model.pt2").exists() and not tmp.exists()


def _standalone(code: str, cwd: str) -> str:
    """Runs `code` with the venv's python outside the repository (no repo on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-P", "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


STANDALONE = """
import sys, torch
torch.ops.load_library("mrcnn_ops.so")
{load}
out = run(torch.randint(0, 256, (2, 3, 170, 230), dtype=torch.uint8))
assert "mrcnn" not in sys.modules and "ops" not in sys.modules
print("outputs", len(out), tuple(out[4].shape[1:]))
"""


def test_pt2_loads_without_the_repository(exported, tmp_path):
    _, workdir, result = exported
    folder = os.path.dirname(result["artifacts"]["pt2"]["path"])
    load = "run = torch.export.load('model.pt2').module()"
    assert "outputs 5 (170, 230)" in _standalone(STANDALONE.format(load=load), folder)


def test_bench_times_eager_against_each_artifact(exported):
    """--mode=bench with bench.mode=artifacts: eager and every published artifact, interleaved
    on the same batches, nothing else timed; bench.json holds the table's figures."""
    from mrcnn.engine import bench

    cfg, workdir, _ = exported
    cfg = cfg.copy_and_resolve_references()
    cfg.bench.mode, cfg.bench.image_size = "artifacts", (150, 200)
    cfg.export.bench_batches, cfg.export.bench_iters = (1, 2), 2
    res = bench.bench(cfg, workdir, torch.device("cpu"))
    assert res["runs"] == [] and res["artifacts"]["dtype"] == "float32"
    saved = json.load(open(os.path.join(workdir, "bench.json")))
    for b in ("1", "2"):
        per = saved["artifacts"]["batches"][b]
        assert set(per) == {"eager", "eager-export", "pt2", "onnx"}
        assert per["eager"]["time_vs_eager"] == 1.0
        assert all(r["images_per_s"] > 0 for r in per.values())
    empty = cfg.copy_and_resolve_references()
    empty.export.dir = "no_such_export"
    from mrcnn.config_check import ConfigError

    with pytest.raises(ConfigError, match="no_such_export.*--mode=export"):
        bench.bench(empty, workdir, torch.device("cpu"))


def test_bfloat16_program_is_the_eager_bfloat16_model(tmp_path, tiny_config, tiny_model):
    """export.dtype=bfloat16: the .pt2 carries the autocast (bit for bit the eager bf16
    DeployModel, not the float32 one) and its sidecar says so; bench times eager in it."""
    from mrcnn.engine import bench

    workdir = str(tmp_path)
    cfg = _export_config(tiny_config, tiny_model, workdir, ("pt2",))
    cfg.export.dtype = "bfloat16"
    res = runner.run(cfg, workdir, "cpu")["artifacts"]["pt2"]
    assert res["passed"], res
    fig = res["parity"]
    assert fig["max_box_px"] == 0.0 and fig["max_score"] == 0.0 and fig["detections"] > 0
    assert json.load(open(res["path"] + ".json"))["dtype"] == "bfloat16"
    images = parity.synthetic_images([(150, 210)] * 2, seed=5)
    got = load_artifact(res["path"])(images)
    bf16 = Predictor(DeployModel(tiny_model, cfg.input, dtype="bfloat16").eval())(images)
    fp32 = _eager(cfg, tiny_model)(images)
    assert all(torch.equal(g["scores"], w["scores"]) for g, w in zip(got, bf16))
    assert not all(torch.equal(g["scores"], w["scores"]) for g, w in zip(got, fp32))
    cfg.export.dtype = "float32"  # bench follows the artifacts' sidecars, not the config
    cfg.bench.mode, cfg.bench.image_size = "artifacts", (150, 200)
    cfg.export.bench_batches, cfg.export.bench_iters = (1,), 1
    assert bench.bench(cfg, workdir, torch.device("cpu"))["artifacts"]["dtype"] == "bfloat16"


@pytest.fixture(scope="module")
def exported_aoti(exported, tiny_model):
    """The AOTInductor package of the same program (compiled from the published .pt2)."""
    cfg, workdir, result = exported
    folder = os.path.dirname(result["artifacts"]["pt2"]["path"])
    ep = torch.export.load(result["artifacts"]["pt2"]["path"])
    tmp = runner.write_artifact("aoti", ep, folder, "cpu")
    batches = parity.parity_batches(cfg.input)
    return runner.check_and_publish("aoti", tmp, _eager(cfg, tiny_model), batches, cfg, [],
                                    runner.OPS_LIBRARY)


# Compiling an AOTInductor package of even the tiny model took 7 minutes (at load 5-7) on the
# 2-core development machine (CI's kind): these two run where MRCNN_TEST_AOTI=1 asks for them;
# tests/export/test_aoti_ops.py keeps the mask-branch regression (18 s) in every run.
needs_aoti = pytest.mark.skipif(os.environ.get("MRCNN_TEST_AOTI") != "1",
                                reason="AOTInductor compile: set MRCNN_TEST_AOTI=1 (slow on 2 cores)")


@needs_aoti
def test_aoti_package_parity_and_standalone_load(exported_aoti):
    res = exported_aoti
    assert res["passed"], res
    folder = os.path.dirname(res["path"])
    load = f"run = torch._inductor.aoti_load_package({os.path.basename(res['path'])!r})"
    assert "outputs 5 (170, 230)" in _standalone(STANDALONE.format(load=load), folder)


@needs_aoti
@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("c++") is None,
                    reason="needs cmake and a C++ compiler")
def test_cpp_example_builds_and_runs(exported_aoti, tmp_path):
    build = tmp_path / "build"
    torch_dir = os.path.dirname(torch.__file__)
    abi = str(int(torch._C._GLIBCXX_USE_CXX11_ABI))
    for cmd in (["cmake", "-S", os.path.join(REPO, "examples", "cpp"), "-B", str(build),
                 f"-DTORCH_DIR={torch_dir}", f"-DTORCH_CXX11_ABI={abi}",
                 "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build), "-j2"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    folder = os.path.dirname(exported_aoti["path"])
    proc = subprocess.run([str(build / "mrcnn_aoti"), exported_aoti["path"],
                           os.path.join(folder, runner.OPS_LIBRARY)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("detections ") and lines[0].endswith("480x640")
    assert len(lines) == 1 + int(lines[0].split()[1])

"""`--mode=predict` from an exported artifact (`predict.artifact`) through main.py, as a user runs
it: the same predictions.json as from the checkpoint, without constructing the model.

One module-scoped workdir: a 2-step tiny training (its real checkpoint), the classifier and mask
heads sharpened in that checkpoint, `--mode=export` of .pt2 and ONNX (not AOTInductor: its compile
takes many minutes on 2 cores), then predict on the same image files from the checkpoint and from
each artifact, each into its own workdir. Slow: the ONNX export takes most of the time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_util

from configs import shapes
from mrcnn.build.categories import stored_table
from mrcnn.engine import checkpoint
from mrcnn.export import parity
# The 2-step training fixture and the main.py runner of the category-table tests, reused.
from test_categories_travel import ROOT, _main, trained  # noqa: F401  (trained: a fixture)

pytestmark = pytest.mark.slow

# The tiny config tests at 64 px, but an exported program needs a padded canvas of >= 96 px a
# side (mrcnn/export/README.md): every run here tests at 160 / 256 px, as tests/export does.
TEST_SIZES = ("--config.input.min_size_test=160", "--config.input.max_size_test=256")

# Runs main.py with MaskRCNN's constructor counted and the count printed at exit: the
# checkpoint run must count 1 (so the count can fail), an artifact run must count 0. Counting
# the class itself, not build(), catches any route to a model (build, build_model, direct).
COUNTED_MAIN = """
import atexit, runpy, sys
from mrcnn.modeling import mask_rcnn
built = []
init = mask_rcnn.MaskRCNN.__init__
def counted(self, *args, **kwargs):
    built.append(1)
    init(self, *args, **kwargs)
mask_rcnn.MaskRCNN.__init__ = counted
atexit.register(lambda: sys.stderr.write(f"MaskRCNN constructed: {len(built)}\\n"))
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
"""


def _counted_main(*args, timeout=600) -> tuple[subprocess.CompletedProcess, int]:
    """main.py under COUNTED_MAIN -> (the process, how many models it constructed)."""
    r = subprocess.run([sys.executable, "-c", COUNTED_MAIN, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    counts = [ln for ln in r.stderr.splitlines() if ln.startswith("MaskRCNN constructed: ")]
    assert counts, (r.stdout + r.stderr)[-3000:]
    return r, int(counts[-1].split(": ")[1])


def _sharpen_heads(workdir: str) -> None:
    """After 2 steps every class scores ~1/4 and mask logits sit near 0, where a float32 ulp
    flips a pixel: spread them as tests/export's tiny_model does, in the checkpoint itself
    (the same file format, so predict and export still read a real checkpoint)."""
    path = os.path.join(workdir, checkpoint.checkpoint_name(2))
    state = checkpoint.load(path)
    model = state["model"]
    g = torch.Generator().manual_seed(0)
    w = model["box_predictor.cls_score.weight"]
    model["box_predictor.cls_score.weight"] = torch.randn(w.shape, generator=g) * 0.2
    model["box_predictor.cls_score.bias"][0] += 1.0
    model["mask_predictor.logits.weight"] *= 5.0
    checkpoint.save(workdir, state, 2)


# Predicted in batches of 2, in file-name order: (a, b), (c, d), (e). Each batch is of one
# size, so the eager model pads no image to another's size (which would change its detections
# slightly, mrcnn/export/README.md). e is 20x400: it resizes to a 13x256 image, under the
# exported program's 96 px canvas, which the eager model runs and an artifact must skip.
IMAGES = {"a.jpg": (120, 168), "b.png": (120, 168), "c.jpg": (140, 100), "d.png": (140, 100),
          "e_thin.png": (20, 400)}
THIN = "e_thin.png"


def _write_images(folder) -> list[str]:
    """IMAGES as JPEG and PNG files -> the names the artifact can run."""
    folder.mkdir()
    for (name, size), im in zip(IMAGES.items(),
                                parity.synthetic_images(list(IMAGES.values()), seed=3)):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / name, quality=95)
    return [n for n in IMAGES if n != THIN]


@pytest.fixture(scope="module")
def exported(trained):
    tmp, w, data = trained
    _sharpen_heads(w)
    r = _main("--config=configs/shapes.py:tiny", "--mode=export", f"--workdir={w}",
              f"--config.data.root={data}", "--config.export.formats=('pt2','onnx')",
              "--config.export.parity_val_images=0", "--config.data.num_workers=0", *TEST_SIZES,
              timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    names = _write_images(tmp / "images")
    return tmp, w, data, names


def _predict(tmp, workdir, data, artifact=None, extra=()):
    """predict (counted) on the images into `workdir` -> (records, models constructed, log)."""
    extra = [*extra, f"--config.predict.artifact={artifact}"] if artifact else list(extra)
    r, built = _counted_main(
        "--config=configs/shapes.py:tiny", "--mode=predict", f"--workdir={workdir}",
        f"--config.data.root={data}", f"--config.predict.input={tmp / 'images'}",
        "--config.predict.score_thresh=0.0", "--config.predict.draw=False",
        "--config.test.ims_per_batch=2", "--config.data.num_workers=0", *TEST_SIZES, *extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    with open(os.path.join(workdir, "predictions.json")) as f:
        return json.load(f), built, r.stdout + r.stderr


def _per_image(records: list[dict], names: list[str]) -> list[dict]:
    """predictions.json -> per image (in `names` order) the Predictor dicts parity compares:
    boxes xyxy, category ids as labels, scores, masks decoded from the RLEs."""
    out = []
    for name in names:
        rs = [r for r in records if os.path.basename(r["file_name"]) == name]
        boxes = torch.tensor([r["bbox"] for r in rs], dtype=torch.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = [mask_util.decode({"size": r["segmentation"]["size"],
                                   "counts": r["segmentation"]["counts"].encode()}) for r in rs]
        out.append({"boxes": boxes, "labels": torch.tensor([r["category_id"] for r in rs]),
                    "scores": torch.tensor([r["score"] for r in rs], dtype=torch.float64),
                    "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0)})
    return out


def _ids(records: list[dict]) -> set[tuple[str, int]]:
    return {(r["file_name"], r["image_id"]) for r in records}


@pytest.fixture(scope="module")
def from_checkpoint(exported):
    tmp, w, data, names = exported
    records, built, _ = _predict(tmp, w, data)
    assert built == 1  # the eager route builds its model: the count can fail
    assert {os.path.basename(f) for f, _ in _ids(records)} == set(IMAGES)  # THIN too
    return records


@pytest.mark.parametrize("fmt,file,tol", [
    ("pt2", "model.pt2", parity.TORCH_TOLERANCES),
    ("onnx", "model.onnx", parity.ONNX_TOLERANCES),
])
def test_artifact_predictions_equal_the_checkpoints(exported, from_checkpoint, fmt, file, tol):
    tmp, w, data, names = exported
    artifact = os.path.join(w, "export", file)
    # Its own workdir, without a checkpoint: the artifact is all this run has.
    records, built, out = _predict(tmp, str(tmp / f"predict_{fmt}"), data, artifact)
    assert built == 0, "predict from an artifact constructed the model"
    # THIN is named and skipped; the others complete with the checkpoint's ids.
    assert _ids(records) == {i for i in _ids(from_checkpoint) if not i[0].endswith(THIN)}
    assert "1 skipped" in out and any(
        "WARNING" in ln and "skipping" in ln and THIN in ln for ln in out.splitlines()), out
    want, got = _per_image(from_checkpoint, names), _per_image(records, names)
    fig = parity.compare(want, got, tol, **parity.cut_of(shapes.get_config("tiny")))
    assert fig["detections"] > 0 and fig["matched"] > 0, fig
    assert parity.passes(fig, tol), (fmt, fig)
    # The artifact's sidecar carries the checkpoint's category table.
    with open(artifact + ".json") as f:
        side = json.load(f)["categories"]
    table = stored_table(os.path.join(w, checkpoint.checkpoint_name(2)))
    assert [c["id"] for c in side] == list(table.category_ids)


@pytest.mark.parametrize("case", ["missing", "folder", "not_an_artifact"])
def test_bad_artifact_is_one_line_exit_2(exported, case):
    tmp, w, data, _ = exported
    bad = {"missing": os.path.join(w, "export", "nope.pt2"), "folder": os.path.join(w, "export"),
           "not_an_artifact": str(tmp / "junk.pt2")}[case]
    if case == "not_an_artifact":  # a sidecar that says pt2 next to a file that is not one
        (tmp / "junk.pt2").write_text("not a program")
        shutil.copyfile(os.path.join(w, "export", "model.pt2.json"), bad + ".json")
    r = _main("--config=configs/shapes.py:tiny", "--mode=predict", f"--workdir={tmp / 'bad'}",
              f"--config.predict.input={tmp / 'images'}", f"--config.predict.artifact={bad}",
              "--config.data.num_workers=0", *TEST_SIZES)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out[-3000:]
    errors = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and bad in errors[0] and "Traceback" not in out, out[-3000:]


def test_pt2_equals_the_exact_eager_route_bit_for_bit(exported):
    """The tolerances above leave room for predict's fast paths (the oneDNN conv + BN fold
    measured boxes 1.5e-5 px, scores 2e-6 apart); with perf.exact the checkpoint route runs the
    kernels the .pt2 program runs, so any other difference (resizing, decoding, pasting,
    categories) shows as a nonzero figure."""
    tmp, w, data, names = exported
    weights = os.path.join(w, checkpoint.checkpoint_name(2))
    exact, built, _ = _predict(tmp, str(tmp / "predict_exact"), data, extra=[
        f"--config.init.weights={weights}", "--config.perf.exact=True"])
    assert built == 1
    pt2 = os.path.join(tmp, "predict_pt2", "predictions.json")
    if not os.path.isfile(pt2):  # the pt2 case did not run first (-k): run it here
        _predict(tmp, str(tmp / "predict_pt2"), data, os.path.join(w, "export", "model.pt2"))
    with open(pt2) as f:
        records = json.load(f)
    zero = {"box_px": 0.0, "score": 0.0, "mask_iou": 1.0}
    fig = parity.compare(_per_image(exact, names), _per_image(records, names), zero)
    assert fig["detections"] > 0 and parity.passes(fig, zero), fig

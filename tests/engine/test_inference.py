"""The inference loop (dtype, grad mode, timing, postprocess) and the choice of weights."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from configs import r50_fpn_1x
from mrcnn.build import FastPaths, resolve_weights
from mrcnn.engine import inference
from mrcnn.structures import Batch, Detections, ImageBatch, ImageInfo


class Recorder(nn.Module):
    """Returns per image one box [1, 2, 5, 6] scaled by the image id, in the autocast dtype when
    one is active, and records the modes it was called in."""

    def __init__(self, n_out: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        self.modes = []
        self.n_out = n_out

    def forward(self, images: ImageBatch) -> list[Detections]:
        y = self.conv(images.tensor)  # bf16 under autocast
        self.modes.append((torch.is_inference_mode_enabled(), y.dtype))
        out = []
        n = len(images) if self.n_out is None else self.n_out
        for b in range(n):
            i = float(images.tensor[b, 0, 0, 0])
            box = torch.tensor([[1.0, 2.0, 5.0, 6.0]], dtype=y.dtype) * i
            out.append(
                Detections(
                    box,
                    torch.ones(1, dtype=y.dtype),
                    torch.tensor([1]),
                    torch.full((1, 1, 4, 4), 0.75, dtype=y.dtype),
                )
            )
        return out


def _batches(ids, batch_size=2, size=(8, 12)):
    for s in range(0, len(ids), batch_size):
        chunk = ids[s : s + batch_size]
        t = torch.zeros(len(chunk), 3, *size)
        for b, i in enumerate(chunk):
            t[b, 0, 0, 0] = i
        infos = [ImageInfo(i, f"{i}.png", (2 * size[0], 2 * size[1]), size) for i in chunk]
        yield Batch(ImageBatch(t, [size] * len(chunk)), infos)


def _scale_to_original(det, size, orig_size, mask_threshold=0.5):
    """A stand-in for detections_to_original: scales boxes, makes full-size masks."""
    sy, sx = orig_size[0] / size[0], orig_size[1] / size[1]
    boxes = det.boxes * torch.tensor([sx, sy, sx, sy])
    masks = (det.masks[:, 0].mean((1, 2)) > mask_threshold).to(torch.uint8)
    masks = masks[:, None, None].expand(-1, *orig_size).contiguous()
    return Detections(boxes, det.scores, det.labels, masks)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_run_inference_outputs_and_modes(dtype):
    model = Recorder().eval()
    ids = [3, 1, 4, 1, 5]
    stats = inference.InferenceStats()
    got = []
    for info, det in inference.run_inference(
        model,
        _batches(ids),
        torch.device("cpu"),
        FastPaths(dtype=dtype),
        stats=stats,
        warmup=1,
        postprocess=_scale_to_original,
    ):
        # Between yields the caller is back in normal grad mode.
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert det.boxes.dtype == det.scores.dtype == torch.float32
        assert det.masks.dtype == torch.uint8 and tuple(det.masks.shape) == (1, 16, 24)
        got.append((info.image_id, det.boxes[0].tolist()))
    expected_dtype = torch.float32 if dtype == "float32" else torch.bfloat16
    assert model.modes == [(True, expected_dtype)] * 3
    assert [i for i, _ in got] == ids
    for i, box in got:
        assert box == pytest.approx([2 * i, 4 * i, 10 * i, 12 * i])
    assert stats.images == 5 and stats.batches == 3
    assert stats.timed_images == 3  # the first (warm-up) batch of 2 is not timed
    assert stats.seconds > 0 and stats.images_per_s > 0


def test_run_inference_mask_threshold_and_empty_batches():
    model = Recorder().eval()
    batches = [Batch(ImageBatch(torch.zeros(0, 3, 8, 12), []), [])] + list(_batches([1, 2]))
    out = list(
        inference.run_inference(
            model, batches, torch.device("cpu"), mask_threshold=0.8, postprocess=_scale_to_original
        )
    )
    assert len(out) == 2 and len(model.modes) == 1  # the empty batch never reaches the model
    assert all(int(det.masks.sum()) == 0 for _, det in out)  # 0.75 < 0.8


def test_run_inference_stopping_early_leaves_grad_mode_on():
    gen = inference.run_inference(
        Recorder().eval(),
        _batches([1, 2, 3, 4]),
        torch.device("cpu"),
        FastPaths(dtype="bfloat16"),
        postprocess=_scale_to_original,
    )
    next(gen)
    del gen
    assert torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")


def test_run_inference_checks_output_count():
    with pytest.raises(RuntimeError, match="returned 1 detections for 2 images"):
        list(
            inference.run_inference(
                Recorder(n_out=1).eval(),
                _batches([1, 2]),
                torch.device("cpu"),
                postprocess=_scale_to_original,
            )
        )


def test_run_inference_with_the_model_postprocess():
    """The default postprocess (the model's detections_to_original): boxes scaled to the
    original size, mask probabilities pasted into the box and thresholded."""
    out = list(inference.run_inference(Recorder().eval(), _batches([1, 2]), torch.device("cpu")))
    for info, det in out:
        i = info.image_id
        assert det.masks.dtype == torch.uint8 and tuple(det.masks.shape[1:]) == info.orig_size
        assert det.boxes[0].tolist() == pytest.approx([2.0 * i, 4.0 * i, 10.0 * i, 12.0 * i])
        ys, xs = det.masks[0].nonzero().unbind(1)
        # Filled inside the box, nothing beyond it (one pixel of slack for the paste's rounding).
        assert det.masks[0, 4 * i + 1 : 12 * i - 1, 2 * i + 1 : 10 * i - 1].all()
        assert xs.min() >= 2 * i - 1 and xs.max() <= 10 * i and ys.min() >= 4 * i - 1
        assert ys.max() <= 12 * i


def test_resolve_weights(tmp_path):
    config = r50_fpn_1x.get_config()
    workdir = tmp_path / "run"
    workdir.mkdir()
    with pytest.raises(FileNotFoundError, match="init.weights is not set.*no checkpoint"):
        resolve_weights(config, str(workdir))
    ckpt = workdir / "model_0000010.pth"
    torch.save({"model": {}}, ckpt)
    (workdir / "last_checkpoint").write_text("model_0000010.pth\n")
    assert resolve_weights(config, str(workdir)) == (str(ckpt), "native")
    # Explicit weights win over the checkpoint, with their format.
    w = tmp_path / "tv.pth"
    torch.save({}, w)
    config.init.weights, config.init.format = str(w), "torchvision"
    assert resolve_weights(config, str(workdir)) == (str(w), "torchvision")
    config.init.weights = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        resolve_weights(config, str(workdir))
    # A pointer to a file that is gone is no checkpoint.
    config.init.weights = None
    os.unlink(ckpt)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resolve_weights(config, str(workdir))


def test_autocast_context():
    with inference.autocast(torch.device("cpu"), "bfloat16"):
        assert torch.is_autocast_enabled("cpu")
    with inference.autocast(torch.device("cpu"), "float32"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="float64"):
        inference.autocast(torch.device("cpu"), "float64")

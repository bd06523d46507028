"""The eager DeployModel equals the ordinary inference path (data pipeline + model + pasting)."""

import pytest
import torch

from mrcnn.data.collate import collate_images
from mrcnn.data.transforms import preprocess
from mrcnn.export import program
from mrcnn.export.wrapper import DeployModel
from mrcnn.modeling.postprocess import detections_to_original
from tests.export.conftest import make_images


def ordinary(model, config, images):
    """What --mode=eval/predict compute for one batch: transforms.preprocess, collate_images,
    model(ImageBatch), detections_to_original per image."""
    pre = [preprocess(im, config.input, train=False) for im in images]
    batch = collate_images([x for x, _ in pre], config.input.size_divisibility)
    with torch.inference_mode():
        dets = model(batch)
    return [detections_to_original(d, info.size, info.orig_size) for d, (_, info) in zip(dets, pre)]


def test_deploy_model_equals_ordinary_inference(tiny_model, tiny_config):
    wrapper = DeployModel(tiny_model, tiny_config.input).eval()
    # Sizes whose padding stays under 41% of the resized height: there torchvision's inferred
    # pooler scales are the levels' true ones (DeployModel.pool).
    for size, batch in (((64, 64), 1), ((60, 80), 3), ((80, 56), 2)):
        images = make_images([size] * batch, seed=batch)
        with torch.inference_mode():
            boxes, scores, labels, img, masks = wrapper(torch.stack(images))
        want = ordinary(tiny_model, tiny_config, images)
        assert sum(len(d.scores) for d in want) > 0
        for i, det in enumerate(want):
            sel = img == i
            assert torch.equal(boxes[sel], det.boxes)
            assert torch.equal(scores[sel], det.scores)
            assert torch.equal(labels[sel], det.labels)
            assert torch.equal(masks[sel], det.masks)
            assert masks.shape[-2:] == size


@pytest.mark.slow
def test_program_accepts_canvases_of_either_parity(tiny_model, tiny_config):
    """One exported program runs images whose padded canvas has an odd or even number of 32 px
    cells on either side (torch 2.11's pooling shape function guarded on that parity), and
    equals the eager wrapper there."""
    cfg = tiny_config.copy_and_resolve_references()
    cfg.input.min_size_test, cfg.input.max_size_test = 160, 256
    wrapper = DeployModel(tiny_model, cfg.input).eval()
    module = program.export_program(wrapper, cfg.input).module()
    # Canvas cells (h, w) / 32: (5, 7), (5, 8), (8, 5), (4, 8).
    sizes = ((160, 224), (100, 150), (250, 170), (120, 256))
    cells = {tuple(c // 32 for c in program.resized_canvas(h, w, cfg.input)[1]) for h, w in sizes}
    assert {(a % 2, b % 2) for a, b in cells} == {(1, 1), (1, 0), (0, 1), (0, 0)}
    for k, size in enumerate(sizes):
        images = torch.stack(make_images([size] * (k % 2 + 1), seed=k))
        with torch.inference_mode():
            want = wrapper(images)
        got = module(images)
        for a, b in zip(got, want):
            assert torch.equal(a, b)


def test_bfloat16_deploy_model_runs_the_network_in_bfloat16(tiny_model, tiny_config):
    """export.dtype=bfloat16: backbone, RPN and heads see bf16 (autocast inside forward, so an
    exported program carries it), the outputs keep the float32 convention, and detections stay
    close to float32's on the same weights."""
    seen = {}

    def record(name):
        def hook(module, inputs, out):
            first = out[0] if isinstance(out, (tuple, list)) else out
            first = next(iter(first.values())) if isinstance(first, dict) else first
            first = first[0] if isinstance(first, (tuple, list)) else first
            seen[name] = first.dtype  # returns None: the output is left as it is
        return hook

    names = ("backbone", "box_predictor", "mask_predictor")
    hooks = [getattr(tiny_model, n).register_forward_hook(record(n)) for n in names]
    images = torch.stack(make_images([(64, 80)] * 2, seed=3))
    try:
        with torch.inference_mode():
            want = DeployModel(tiny_model, tiny_config.input).eval()(images)
            assert set(seen.values()) == {torch.float32}
            seen.clear()
            got = DeployModel(tiny_model, tiny_config.input, dtype="bfloat16").eval()(images)
    finally:
        for h in hooks:
            h.remove()
    assert seen == dict.fromkeys(names, torch.bfloat16)
    assert [t.dtype for t in got] == [t.dtype for t in want]
    assert got[0].numel() > 0
    assert not torch.equal(got[1], want[1])  # another precision: not the float32 numbers
    assert (got[1].max() - want[1].max()).abs() < 0.05
    with pytest.raises(ValueError, match="float16"):
        DeployModel(tiny_model, tiny_config.input, dtype="float16")

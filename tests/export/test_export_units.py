"""Fast checks of the export pieces that need no exporter: the aten decompositions used for
ONNX against our kernels, the size grouping of the predictor, the parity figures, size limits."""

import pytest
import torch

import ops
from configs import shapes
from mrcnn.export import onnx_ops, parity, program
from mrcnn.export.predictor import Predictor, group_by_size


def _boxes(n, size=200.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, 2), generator=g) * size
    wh = torch.rand((n, 2), generator=g) * size / 3 + 1
    return torch.cat([xy, xy + wh], 1)


def test_paste_masks_decomposition_matches_the_kernel():
    g = torch.Generator().manual_seed(1)
    masks = torch.rand((12, 28, 28), generator=g)
    boxes = torch.cat([_boxes(10, 90.0), torch.tensor([[-20.0, -5, 30, 40], [80, 70, 130, 99]])])
    want = ops.paste_masks(masks, boxes, 100, 120, 0.5, 1)
    got = onnx_ops.paste_masks(masks, boxes, 100, 120, 0.5, 1)
    assert got.shape == want.shape and got.dtype == torch.bool
    # Same taps and sums in the same order as the kernel: at most a pixel where a probability
    # rounds across the threshold.
    assert (got != want).sum() <= 2
    assert want.any()


def test_batched_nms_decomposition_keeps_the_same_boxes():
    boxes = _boxes(300)
    scores = torch.rand(300, generator=torch.Generator().manual_seed(2))
    idxs = torch.randint(0, 7, (300,), generator=torch.Generator().manual_seed(3))
    want = ops.batched_nms(boxes, scores, idxs, 0.5)
    got = onnx_ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(got, want)


def test_multilevel_and_rpn_decompositions_equal_the_kernels():
    g = torch.Generator().manual_seed(4)
    feats = [torch.rand((2, 8, 64 // 2 ** k, 96 // 2 ** k), generator=g) for k in range(4)]
    rois = torch.cat([torch.randint(0, 2, (40, 1)).float(), _boxes(40, 250.0)], 1)
    scales = [0.25, 0.125, 0.0625, 0.03125]
    want = ops.multilevel_roi_align(feats, rois, 7, scales, 2, False)
    got = onnx_ops.multilevel_roi_align(feats, rois, scales, 7, 7, 2, False, 4, 224.0, 2)
    assert torch.equal(got, want)

    obj = torch.randn((2, 500), generator=g)
    deltas = torch.randn((2, 500, 4), generator=g) * 0.1
    anchors = _boxes(500, 250.0)
    hw = torch.tensor([[240.0, 250.0], [200.0, 250.0]])
    want = ops.rpn_decode_topk(obj, deltas, anchors, [400, 100], 150, hw, min_size=1.0)
    got = onnx_ops.rpn_decode_topk(obj, deltas, anchors, [400, 100], 150, hw, [1.0] * 4,
                                   4.135166556742356, 1.0, 0.0)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_predictor_groups_by_size_and_keeps_the_order():
    images = [torch.zeros((3, h, w), dtype=torch.uint8) for h, w in
              [(10, 20), (20, 10), (10, 20), (10, 20), (10, 20)]]
    assert group_by_size(images, 2) == [[0, 2], [3, 4], [1]]
    calls = []

    def run(x):  # one detection per image whose score is the image's height
        calls.append(tuple(x.shape))
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        return (torch.zeros((b, 4)), torch.full((b,), float(h)), torch.ones(b, dtype=torch.long),
                torch.arange(b), torch.zeros((b, h, w), dtype=torch.uint8))

    out = Predictor(run, max_batch=2)(images)
    assert calls == [(2, 3, 10, 20), (2, 3, 10, 20), (1, 3, 20, 10)]
    assert [float(d["scores"][0]) for d in out] == [10, 20, 10, 10, 10]
    assert out[1]["masks"].shape == (1, 20, 10)
    with pytest.raises(ValueError, match="uint8"):
        Predictor(run)([torch.zeros((3, 5, 5))])


def test_parity_figures_and_tolerances():
    det = {"boxes": torch.tensor([[0.0, 0, 10, 10]]), "scores": torch.tensor([0.9]),
           "labels": torch.tensor([1]), "masks": torch.ones((1, 4, 4), dtype=torch.uint8)}
    moved = dict(det, boxes=det["boxes"] + 2e-3)
    fig = parity.compare([det], [moved])
    assert fig["labels_identical"] and fig["max_box_px"] == pytest.approx(2e-3, rel=1e-3)
    assert not parity.passes(fig, parity.TORCH_TOLERANCES)
    assert parity.passes(parity.compare([det], [det]), parity.TORCH_TOLERANCES)
    other = dict(det, labels=torch.tensor([2]))
    assert not parity.compare([det], [other])["labels_identical"]


def test_size_limits_are_one_clear_error():
    cfg = shapes.get_config("tiny")  # 64 px test size: every canvas is below the minimum
    with pytest.raises(ValueError, match="canvas"):
        program.check_size(64, 64, cfg.input)
    with pytest.raises(ValueError, match="min_size_test"):
        program.example_input(cfg.input)
    cfg.input.min_size_test, cfg.input.max_size_test = 160, 256
    program.check_size(64, 64, cfg.input)  # resized to 160 x 160
    x = program.example_input(cfg.input)
    assert x.dtype == torch.uint8 and x.shape[0] == 2 and x.shape[2] != x.shape[3]


def test_interleaved_timing_reports_ratios_to_eager():
    import time

    from mrcnn.export.bench import table, time_interleaved

    calls = []
    runners = {"eager": lambda ims: (calls.append("eager"), time.sleep(0.02)),
               "fast": lambda ims: (calls.append("fast"), time.sleep(0.005))}
    res = time_interleaved(runners, [None, None], rounds=3, warmup=1)
    assert calls == ["eager", "fast", "fast", "eager", "eager", "fast", "fast", "eager"]
    assert res["eager"]["time_vs_eager"] == 1.0
    assert res["fast"]["time_vs_eager"] < 0.6
    assert res["fast"]["images_per_s"] > res["eager"]["images_per_s"]
    assert "| 1 | fast | float32 |" in table({"batches": {"1": res}, "dtype": "float32"})


def test_export_dtype_and_formats_are_checked():
    from mrcnn.config_check import ConfigError
    from mrcnn.export.runner import check_formats

    assert check_formats(("pt2", "aoti"), "bfloat16") == ["pt2", "aoti"]
    with pytest.raises(ConfigError, match="formats=pt2,aoti"):
        check_formats(("pt2", "onnx"), "bfloat16")  # onnxruntime's CPU provider: no bf16 conv
    with pytest.raises(ConfigError, match="config.export.dtype='float16'"):
        check_formats(("pt2",), "float16")
    with pytest.raises(ConfigError, match="config.export.formats"):
        check_formats(("pt2", "tflite"))


def test_tolerances_per_format_and_dtype():
    from mrcnn.export.runner import tolerances

    c = shapes.get_config("tiny")
    torch_tol = {"box_px": 1e-3, "score": 1e-4, "mask_iou": 0.99}
    assert tolerances(c, "pt2") == torch_tol and tolerances(c, "aoti") == torch_tol
    onnx = tolerances(c, "onnx")
    assert onnx == dict(torch_tol, box_px=2e-3, mask_iou=0.9, mean_mask_iou=0.99,
                        mask_shift_px=1)
    c.export.dtype = "bfloat16"  # Inductor's bf16 mask convolutions: ONNX's mask rule
    assert tolerances(c, "aoti") == dict(onnx, box_px=1e-3)
    assert tolerances(c, "pt2") == torch_tol


def test_aoti_is_compiled_from_a_channels_last_copy_with_freezing(tiny_config, tiny_model):
    import copy

    from mrcnn.export.runner import aoti_program
    from mrcnn.export.wrapper import DeployModel
    from tests.export.conftest import make_images

    cfg = copy.deepcopy(tiny_config)
    cfg.input.min_size_test, cfg.input.max_size_test = 160, 256  # a canvas export accepts
    deploy = DeployModel(copy.deepcopy(tiny_model), cfg.input).eval()
    ep, settings = aoti_program(deploy, cfg)
    assert settings == {"freezing": True}
    convs = [v for v in ep.state_dict.values() if v.dim() == 4 and min(v.shape[1:]) > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) for v in convs)
    # The parity reference is left as it was: contiguous weights, contiguous input.
    assert not deploy.channels_last
    assert all(p.is_contiguous() for p in deploy.parameters())
    x = torch.stack(make_images([(170, 230)]))
    with torch.no_grad():
        want, got = deploy(x), ep.module()(x)
    assert torch.equal(want[2], got[2]) and torch.equal(want[4], got[4])
    assert (want[0] - got[0]).abs().max() < 1e-3
    c = copy.deepcopy(cfg)
    c.export.dtype = "bfloat16"  # bf16 packages: compiled from the .pt2 program, as measured
    assert aoti_program(deploy, c) is None
    c = copy.deepcopy(cfg)
    c.export.aoti_fast = False
    assert aoti_program(deploy, c) is None


def test_aoti_sidecar_records_how_the_package_was_compiled(tiny_config):
    from mrcnn.export import sidecar
    from mrcnn.export.runner import compiled_record

    fast = (None, {"freezing": True})
    rec = compiled_record("aoti", fast, "float32")
    assert rec == {"memory_format": "channels_last",
                   "inductor_configs": {"freezing": True, "layout_optimization": False}}
    plain = compiled_record("aoti", None, "bfloat16")
    assert plain["memory_format"] == "contiguous"
    assert plain["inductor_configs"] == {"layout_optimization": False,
                                         "emulate_precision_casts": True}
    assert compiled_record("onnx", fast, "float32") is None
    side = sidecar.make_sidecar("aoti", tiny_config, [], {}, {}, None, 4, rec)
    assert side["compiled"] == rec
    assert "compiled" not in sidecar.make_sidecar("pt2", tiny_config, [], {}, {}, None, 4)

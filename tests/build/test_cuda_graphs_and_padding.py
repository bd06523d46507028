"""perf.pad_to, perf.prefetch, perf.cuda_graphs and fullgraph compile: the CPU-checkable logic,
plus the CUDA paths (skipped without CUDA)."""

import copy

import pytest
import torch

from configs import r50_fpn_1x, shapes
from mrcnn import config_check
from mrcnn.build.cuda_graphs import CudaGraphs
from mrcnn.build.fast_paths import FastPaths, apply, fast_paths
from mrcnn.data import collate
from mrcnn.data.prefetch import Prefetcher, tensors_of
from mrcnn.modeling import build_model
from mrcnn.structures import Batch, ImageBatch, ImageInfo, Targets

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _tiny():
    c = shapes.get_config("runlocal")
    c.model.backbone.width = 8
    c.model.backbone.fpn_channels = 16
    c.model.box_head.fc_dim = 32
    c.model.mask_head.conv_dim = 8
    c.model.mask_head.num_conv = 1
    return c


def _batch(sizes, seed=0, div=32):
    g = torch.Generator().manual_seed(seed)
    images = [torch.randn(3, h, w, generator=g) for h, w in sizes]
    infos = [ImageInfo(i, f"img{i}.jpg", s, s) for i, s in enumerate(sizes)]
    targets = [Targets(torch.tensor([[1.0, 2.0, 5.0, 7.0]]), torch.tensor([1])) for _ in sizes]
    return Batch(collate.collate_images(images, div), infos, targets), images


# ----------------------------------------------------------------------------- pad_to


@pytest.mark.parametrize("sizes,shape", [
    ([(50, 60), (64, 40 + 24)], (64, 96)),  # landscape (and one square): (H, W)
    ([(64, 64), (30, 30)], (64, 96)),  # square counts as landscape
    ([(90, 60), (96, 64)], (96, 64)),  # portrait: (W, H)
])
def test_pad_to_one_shape_per_orientation(sizes, shape):
    batch, images = _batch(sizes)
    out = collate.pad_batch_to(batch, (64, 96))
    x = out.images.tensor
    assert tuple(x.shape) == (len(sizes), 3, *shape)
    assert out.images.image_sizes == sizes and out.infos is batch.infos
    for i, im in enumerate(images):
        h, w = im.shape[-2:]
        torch.testing.assert_close(x[i, :, :h, :w], im, rtol=0, atol=0)
        # everything outside the image is exactly zero
        mask = torch.ones_like(x[i], dtype=torch.bool)
        mask[:, :h, :w] = False
        assert x[i][mask].abs().sum() == 0


def test_pad_to_keeps_channels_last():
    batch, _ = _batch([(40, 50)])
    batch.images.tensor = batch.images.tensor.contiguous(memory_format=torch.channels_last)
    x = collate.pad_batch_to(batch, (64, 96)).images.tensor
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_pad_to_too_large_image_names_image_and_key():
    batch, _ = _batch([(50, 60), (60, 100)])
    with pytest.raises(ValueError, match=r"perf\.pad_to.*image 1 \(img1\.jpg\) is 60x100"):
        collate.pad_batch_to(batch, (64, 96))
    # portrait: 100 > 96 in height
    batch, _ = _batch([(100, 60)])
    with pytest.raises(ValueError, match="larger than its padded shape 96x64"):
        collate.pad_batch_to(batch, (64, 96))


def test_pad_to_mixed_training_batch_is_an_error():
    batch, _ = _batch([(50, 60), (60, 50)])
    with pytest.raises(ValueError, match="mixes landscape and portrait.*aspect_ratio_grouping"):
        collate.pad_batch_to(batch, (64, 96))


def test_split_by_orientation_keeps_every_image_once():
    sizes = [(50, 60), (90, 60), (64, 64), (60, 50)]
    batch, images = _batch(sizes)
    parts = collate.split_by_orientation(batch, (64, 96))
    assert [tuple(p.images.tensor.shape[-2:]) for p in parts] == [(64, 96), (96, 64)]
    assert [[i.image_id for i in p.infos] for p in parts] == [[0, 2], [1, 3]]
    for p in parts:
        for info, t, x, s in zip(p.infos, p.targets, p.images.tensor, p.images.image_sizes):
            assert t is batch.targets[info.image_id] and s == sizes[info.image_id]
            im = images[info.image_id]
            torch.testing.assert_close(x[:, : s[0], : s[1]], im, rtol=0, atol=0)
            outside = torch.ones_like(x, dtype=torch.bool)
            outside[:, : s[0], : s[1]] = False
            assert not x[outside].any()  # nothing else is non-zero
    one = collate.split_by_orientation(_batch([(50, 60)])[0], (64, 96))
    assert len(one) == 1 and tuple(one[0].images.tensor.shape[-2:]) == (64, 96)


def test_run_inference_pads_and_splits_by_orientation():
    from mrcnn.engine.inference import run_inference
    from mrcnn.structures import Detections

    seen = []

    class Model(torch.nn.Module):
        def forward(self, images):
            seen.append((tuple(images.tensor.shape), list(images.image_sizes)))
            return [Detections(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                               None) for _ in images.image_sizes]

    batch, _ = _batch([(50, 60), (90, 60), (64, 64)])
    out = list(run_inference(Model(), [batch], torch.device("cpu"), FastPaths(pad_to=(64, 96)),
                             postprocess=lambda det, *a: det))
    assert sorted(i.image_id for i, _ in out) == [0, 1, 2]
    assert seen == [((2, 3, 64, 96), [(50, 60), (64, 64)]), ((1, 3, 96, 64), [(90, 60)])]


# ----------------------------------------------------------------------------- config_check


def _check(**perf):
    c = r50_fpn_1x.get_config()
    c.device = "cpu"
    for k, v in perf.items():
        c.perf[k] = v
    config_check.validate(c, mode="train")


def test_config_check_perf_keys():
    _check(pad_to=(800, 1344))  # valid
    with pytest.raises(config_check.ConfigError, match=r"perf\.cuda_graphs.*set perf\.pad_to"):
        _check(cuda_graphs=True)
    with pytest.raises(config_check.ConfigError, match=r"perf\.cuda_graphs.*needs a CUDA device"):
        _check(cuda_graphs=True, pad_to=(800, 1344))
    with pytest.raises(config_check.ConfigError, match=r"perf\.cuda_graphs.*perf\.compile"):
        _check(cuda_graphs=True, pad_to=(800, 1344), compile=True)
    with pytest.raises(config_check.ConfigError, match=r"perf\.pad_to.*H <= W"):
        _check(pad_to=(1344, 800))
    # The graphed backward's static gradient buffers would be overwritten by the next
    # micro-step: refused rather than silently wrong gradients.
    c = r50_fpn_1x.get_config()
    c.device, c.solver.accumulate_steps = "cpu", 2
    c.perf.cuda_graphs, c.perf.pad_to = True, (800, 1344)
    with pytest.raises(config_check.ConfigError, match=r"accumulate_steps=2 > 1"):
        config_check.validate(c, mode="train")
    with pytest.raises(config_check.ConfigError, match=r"perf\.pad_to.*size_divisibility=32"):
        _check(pad_to=(800, 1340))
    with pytest.raises(config_check.ConfigError, match=r"perf\.pad_to.*800x1333"):
        _check(pad_to=(800, 1312))
    with pytest.raises(config_check.ConfigError, match=r"perf\.pad_to.*must be \(\) or"):
        _check(pad_to=(800,))
    c = r50_fpn_1x.get_config()
    c.perf.pad_to = (800, 1344)
    c.data.aspect_ratio_grouping = False
    with pytest.raises(config_check.ConfigError, match="aspect_ratio_grouping=True"):
        config_check.validate(c, mode="train")


def test_cuda_graphs_object_refuses_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    model = build_model(_tiny().model)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        CudaGraphs(model, (64, 96))


# ----------------------------------------------------------------------------- prefetch


def test_prefetcher_cpu_is_a_pass_through():
    batches = [_batch([(40, 50), (30, 20)], seed=s)[0] for s in range(4)]
    out = list(Prefetcher(iter(batches), "cpu"))
    assert len(out) == 4
    for a, b in zip(out, batches):
        assert a.infos == b.infos
        assert all(x is y for x, y in zip(tensors_of(a), tensors_of(b)))  # no copy on the CPU
    # it ends cleanly and stays ended
    p = Prefetcher(iter(batches[:1]), "cpu")
    assert next(p) is not None
    for _ in range(2):
        with pytest.raises(StopIteration):
            next(p)


def test_prefetcher_transform_and_overlap_off():
    batches = [_batch([(40, 50)], seed=s)[0] for s in range(3)]
    pad = lambda b: collate.pad_batch_to(b, (64, 96))  # noqa: E731
    out = list(Prefetcher(batches, torch.device("cpu"), transform=pad, overlap=False))
    assert [tuple(b.images.tensor.shape) for b in out] == [(1, 3, 64, 96)] * 3


def test_prefetcher_propagates_loader_errors_in_order():
    batches = [_batch([(40, 50)], seed=s)[0] for s in range(2)]

    def loader():
        yield from batches
        raise OSError("disk gone")

    p = Prefetcher(loader(), "cpu")
    assert next(p) is not None and next(p) is not None
    with pytest.raises(OSError, match="disk gone"):
        next(p)


@cuda
def test_prefetcher_cuda_same_batches_in_order_and_errors():
    batches = [_batch([(40, 50), (30, 20)], seed=s)[0] for s in range(5)]

    def loader():
        yield from batches
        raise OSError("disk gone")

    p = Prefetcher(loader(), "cuda", transform=lambda b: collate.pad_batch_to(b, (64, 96)))
    for ref in batches:
        got = next(p)
        torch.cuda.synchronize()
        assert got.images.tensor.is_cuda and got.images.tensor.shape[-2:] == (64, 96)
        torch.testing.assert_close(got.images.tensor.cpu()[..., :64, :64],
                                   collate.pad_batch_to(ref, (64, 96)).images.tensor[..., :64, :64])
        for t, r in zip(got.targets, ref.targets):
            torch.testing.assert_close(t.boxes.cpu(), r.boxes)
    with pytest.raises(OSError, match="disk gone"):
        next(p)


# ----------------------------------------------------------------------------- compile


def test_fullgraph_compile_of_the_rpn_head_matches_eager():
    c = _tiny()
    torch.manual_seed(0)
    model = build_model(c.model).eval()
    ref = copy.deepcopy(model)
    c.perf.compile = True
    c.perf.compile_fullgraph = True
    apply(model, fast_paths(c, "cpu", "eval"))
    assert model.state_dict().keys() == ref.state_dict().keys()
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(2, 16, s, s, generator=g) for s in (16, 8, 4, 2, 1)]
    with torch.no_grad():
        a = ref.rpn(feats)
        b = model.rpn(feats)  # fullgraph=True: a graph break would raise here
    for x, y in zip(a[0] + a[1], b[0] + b[1]):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- CUDA graphs


def _graph_inputs(c, device, shape=(64, 96), batch=2):
    from mrcnn.engine.bench import synthetic_inputs

    _, images, targets, _ = synthetic_inputs(c, batch, 60, 90, device)
    images = collate.pad_images_to(images, shape)
    return images, targets


@cuda
@pytest.mark.parametrize("sparse_grad", [True, False])
def test_cuda_graphs_training_equals_eager(sparse_grad):
    c = _tiny()
    c.model.rpn.sparse_grad = sparse_grad  # forward-only RPN graph vs graphed RPN backward
    c.model.backbone.norm = "GN"  # no BN statistics: eager and graphed steps see the same model
    c.perf.pad_to = (64, 96)
    c.perf.cuda_graphs = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = build_model(c.model).to(device).train()
    graphed = copy.deepcopy(eager)
    graphs = CudaGraphs(graphed, c.perf.pad_to)
    graphs.capture_training(2, "float32", shapes=[(64, 96)])
    images, targets = _graph_inputs(c, device)
    for model in (eager, graphed):
        model.sampling_generator = torch.Generator(device).manual_seed(0)
    for _ in range(2):  # twice: the second replays with the same static buffers
        grads = []
        for model in (eager, graphed):
            model.zero_grad(set_to_none=True)
            model.sampling_generator.manual_seed(0)
            losses = model(images, targets)
            sum(losses.values()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()
                          if p.grad is not None})
            grads[-1]["_loss"] = sum(losses.values()).detach()
        assert grads[0].keys() == grads[1].keys()
        for k in grads[0]:
            torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-4, atol=1e-5, msg=k)
    with pytest.raises(RuntimeError, match="pad_to orientation shapes"):
        graphed(collate.pad_images_to(images, (64, 128)), targets)


@cuda
def test_cuda_graphs_inference_equals_eager():
    c = _tiny()
    c.perf.pad_to = (64, 96)
    c.perf.cuda_graphs = True
    device = torch.device("cuda")
    torch.manual_seed(0)
    eager = build_model(c.model).to(device).eval()
    graphed = copy.deepcopy(eager)
    CudaGraphs(graphed, c.perf.pad_to)
    images, _ = _graph_inputs(c, device)
    portrait = collate.pad_images_to(
        ImageBatch(images.tensor.transpose(-1, -2)[..., :90, :60].contiguous(), [(90, 60)] * 2),
        (96, 64))
    with torch.inference_mode():
        for ims in (images, portrait, images):
            a, b = eager(ims), graphed(ims)
            for da, db in zip(a, b):
                torch.testing.assert_close(db.boxes, da.boxes, rtol=1e-4, atol=1e-3)
                torch.testing.assert_close(db.scores, da.scores, rtol=1e-4, atol=1e-4)

"""CUDA graphs over the fixed-shape part of a MaskRCNN (`perf.cuda_graphs`): see `CudaGraphs`.

Built by `mrcnn.build.build`, which holds the `CudaGraphs` object in what it returns (`Built.graphs`)
so the training loop can capture the training graphs; inference graphs are captured on first use.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mrcnn.precision import autocast, autocast_dtype, autocast_state

log = logging.getLogger(__name__)

class _Part(nn.Module):
    """Runs `module`'s original forward; what make_graphed_callables graphs. It holds `module`
    as a submodule so the graph's input surface includes the module's parameters (their
    gradients come out of the graphed backward), without being registered in the model."""

    def __init__(self, module: nn.Module, forward: Callable):
        super().__init__()
        self.inner = module
        self._forward = forward

    def forward(self, *args):
        return self._forward(*args)


@dataclasses.dataclass
class _InferGraph:
    """Forward-only graphs of backbone and RPN head for one input shape, one memory pool."""

    static_x: Tensor
    backbone_graph: torch.cuda.CUDAGraph
    feats: list[Tensor]
    rpn_graph: torch.cuda.CUDAGraph
    rpn_out: tuple[list[Tensor], list[Tensor]]


class _ForwardGraph:
    """A forward-only graph of `fn(static_inputs)` (a list of tensors), no gradient, under the
    autocast in effect at capture: calling it copies the inputs into the static ones (unless they
    are the same memory), replays, and returns the static outputs (overwritten by the next call).
    """

    def __init__(self, fn: Callable, static_inputs: list[Tensor], warmup_iters: int = 3,
                 pool=None):
        self.static_inputs = [t.detach() for t in static_inputs]
        side = torch.cuda.Stream(self.static_inputs[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad():
            with torch.cuda.stream(side):  # warm-up on a side stream, as the docs say
                for _ in range(max(1, warmup_iters)):
                    fn(self.static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
                self.static_outputs = fn(self.static_inputs)

    def __call__(self, inputs: list[Tensor]):
        for s, t in zip(self.static_inputs, inputs):
            if s.data_ptr() != t.data_ptr():
                s.copy_(t)
        self.graph.replay()
        return self.static_outputs


class CudaGraphs:
    """CUDA graphs over the fixed-shape part of a MaskRCNN: `model.backbone` (body + FPN) and
    `model.rpn` (the RPN head's convs). Installed by replacing the two modules' `forward` with a
    dispatcher (instance attributes; the modules, their parameters and state_dict keys are
    unchanged), so MaskRCNN.forward, DDP and checkpoints work as before.

    Training (model.training and grad enabled): forward + backward graphs made with
    `torch.cuda.make_graphed_callables` for (backbone, RPN head) together, per input shape, by
    `capture_training` before the loop (and before DDP wraps the model: DDP's gradient hooks run
    eagerly on the gradients the graphed backward returns, so the all-reduce stays outside the
    graphs and DDP works unchanged). The capture runs under the training autocast with
    `cache_enabled=False`, as the docs require; a call under another autocast state, or with an
    input shape that was not captured, is an error rather than a silent eager step. BN running
    statistics touched by the warm-up iterations are restored afterwards.

    Inference (eval mode or no grad): forward graphs captured lazily per (input shape, autocast
    dtype, memory format) on the first batch of that key: a few warm-up iterations on a side
    stream, then `torch.cuda.graph` capture; backbone and RPN graphs of one key share one pool
    and are always replayed in capture order. Outputs are static buffers overwritten by the next
    replay of the same key; MaskRCNN consumes them before its forward returns.

    Any input shape other than the two `pad_to` orientation shapes is rejected: pad the batch
    (mrcnn.data.collate.pad_batch_to).
    """

    def __init__(self, model: nn.Module, pad_to: Sequence[int], warmup_iters: int = 3):
        if not torch.cuda.is_available():
            raise RuntimeError("config.perf.cuda_graphs=True needs CUDA, and none is available")
        if len(pad_to) != 2:
            raise ValueError(
                f"config.perf.pad_to={tuple(pad_to)!r}: CUDA graphs need one fixed (H, W)"
            )
        dev = next(model.parameters()).device
        if dev.type != "cuda":
            raise RuntimeError(
                f"config.perf.cuda_graphs=True: the model is on {dev}; move it to CUDA first"
            )
        self.model = model
        self.pad_to = (int(pad_to[0]), int(pad_to[1]))
        self.shapes = {self.pad_to, (self.pad_to[1], self.pad_to[0])}
        self.warmup_iters = int(warmup_iters)
        self._backbone_fwd = model.backbone.forward
        self._rpn_fwd = model.rpn.forward
        self._train: dict[tuple, tuple[Callable, Callable]] = {}
        self._infer: dict[tuple, _InferGraph] = {}
        self._active: Callable | None = None  # the RPN graph that goes with the last backbone
        self._active_feats: list[Tensor] | None = None
        model.backbone.forward = self._backbone
        model.rpn.forward = self._rpn

    # -------------------------------------------------------------- dispatch
    def _check_shape(self, x: Tensor) -> None:
        if tuple(x.shape[-2:]) not in self.shapes:
            raise RuntimeError(
                f"config.perf.cuda_graphs: input of shape {tuple(x.shape)} is neither of the "
                f"config.perf.pad_to orientation shapes {sorted(self.shapes)}; pad batches "
                "with mrcnn.data.collate.pad_batch_to"
            )

    @staticmethod
    def _key(x: Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last))

    def _backbone(self, x: Tensor) -> list[Tensor]:
        self._check_shape(x)
        if self.model.training and torch.is_grad_enabled():
            # The autocast dtype is part of the key: a graph replays the casts it captured.
            key = (*self._key(x), autocast_state())
            if key not in self._train:
                raise RuntimeError(
                    f"config.perf.cuda_graphs: no training graph for (input shape, dtype, "
                    f"channels_last, autocast) = {key} (captured: {list(self._train)}); call "
                    "capture_training with this batch size, config.dtype and memory format "
                    "before the training loop"
                )
            graphed_backbone, graphed_rpn = self._train[key]
            feats = graphed_backbone(x)
            self._active, self._active_feats = graphed_rpn, feats
            return feats
        graph = self._infer_graph(x)
        graph.static_x.copy_(x)
        graph.backbone_graph.replay()
        self._active, self._active_feats = graph, graph.feats
        return graph.feats

    def _rpn(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        active, expected = self._active, self._active_feats
        self._active = self._active_feats = None
        if active is None or expected is None or len(feats) != len(expected) or any(
                a is not b for a, b in zip(feats, expected)):
            raise RuntimeError(
                "config.perf.cuda_graphs: the RPN head must be called on the backbone's outputs "
                "right after it (as MaskRCNN.forward does)"
            )
        if isinstance(active, _InferGraph):
            active.rpn_graph.replay()
            return active.rpn_out
        if isinstance(active, _ForwardGraph) and torch.is_grad_enabled():
            raise RuntimeError(
                "config.perf.cuda_graphs: the RPN head was captured without gradient "
                "(model.rpn.sparse_grad) but is called with gradient enabled"
            )
        return active(feats)

    # -------------------------------------------------------------- capture
    def capture_training(
        self, batch_size: int, dtype: str = "float32", channels_last: bool = False,
        shapes: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        """Forward + backward graphs of backbone and RPN head for `batch_size` images of each
        shape in `shapes` (default: both orientations), under autocast `dtype`. Call with the
        model in training mode, on the bare model (before DDP), before the first step."""
        model = self.model
        if not model.training:
            raise RuntimeError("capture_training: put the model in training mode first")
        device = next(model.parameters()).device
        buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        for shape in shapes if shapes is not None else sorted(self.shapes):
            if tuple(shape) not in self.shapes:
                raise ValueError(f"capture_training: {shape} is not a pad_to shape {self.shapes}")
            x = torch.zeros((batch_size, 3, *shape), device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            key = (*self._key(x), autocast_dtype(dtype))
            if key in self._train:
                continue
            backbone = _Part(model.backbone, self._backbone_fwd)
            rpn = _Part(model.rpn, self._rpn_fwd)
            # model.rpn.sparse_grad: MaskRCNN runs the dense RPN head without gradient (its loss
            # re-evaluates the head at the sampled anchors, eagerly): a forward-only graph.
            sparse = bool(model.cfg.rpn.sparse_grad)
            with autocast(device, dtype, cache_enabled=False):
                with torch.no_grad():  # the RPN's sample input: the backbone's output layout
                    sample = self._backbone_fwd(x)
                grad = any(p.requires_grad for p in model.backbone.parameters())
                feats = [f.detach().clone().requires_grad_(grad and not sparse) for f in sample]
                del sample
                if sparse:
                    graphed_backbone = torch.cuda.make_graphed_callables(
                        backbone, (x,), num_warmup_iters=self.warmup_iters)
                    graphed_rpn = _ForwardGraph(self._rpn_fwd, feats, self.warmup_iters)
                else:
                    graphed_backbone, graphed_rpn = torch.cuda.make_graphed_callables(
                        (backbone, rpn), ((x,), (feats,)), num_warmup_iters=self.warmup_iters)
            self._train[key] = (graphed_backbone, graphed_rpn)
            log.info("CUDA graphs: captured training backbone+FPN+RPN head for %s", key)
        # The warm-up iterations ran BN in training mode: put the statistics back, in place
        # (the graphs hold these very buffers).
        with torch.no_grad():
            for n, b in model.named_buffers():
                b.copy_(buffers[n])

    def _infer_graph(self, x: Tensor) -> _InferGraph:
        dtype = autocast_state()
        key = (*self._key(x), dtype)
        graph = self._infer.get(key)
        if graph is not None:
            return graph
        static_x = x.detach().clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        # cache_enabled=False: a cached cast of a weight would be freed when autocast exits,
        # under a graph that still reads it.
        cast = torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None,
                              cache_enabled=False)
        with cast, torch.no_grad():
            with torch.cuda.stream(side):  # warm-up: cudnn autotuning, lazy initialisation
                for _ in range(max(1, self.warmup_iters)):
                    self._rpn_fwd(self._backbone_fwd(static_x))
            torch.cuda.current_stream(x.device).wait_stream(side)
            pool = torch.cuda.graph_pool_handle()
            g_backbone, g_rpn = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(g_backbone, pool=pool, capture_error_mode="thread_local"):
                feats = self._backbone_fwd(static_x)
            with torch.cuda.graph(g_rpn, pool=pool, capture_error_mode="thread_local"):
                rpn_out = self._rpn_fwd(feats)
        graph = _InferGraph(static_x, g_backbone, feats, g_rpn, rpn_out)
        self._infer[key] = graph
        log.info("CUDA graphs: captured inference backbone+FPN+RPN head for %s", key)
        return graph



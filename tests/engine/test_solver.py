"""The lr schedule as a pure function, and parameter groups."""

import pytest
import torch
from torch import nn

from configs import r50_fpn_1x
from mrcnn.engine import solver


def _solver(**kw):
    s = r50_fpn_1x.get_config().solver
    for k, v in kw.items():
        s[k] = v
    return s


def test_warmup_then_multistep():
    s = _solver(warmup_iters=500, warmup_factor=1 / 3, steps=(60000, 80000), gamma=0.1)
    assert solver.lr_factor(0, s) == pytest.approx(1 / 3)
    assert solver.lr_factor(250, s) == pytest.approx(1 / 3 * 0.5 + 0.5)
    assert solver.lr_factor(500, s) == pytest.approx(1.0)
    assert solver.lr_factor(59999, s) == pytest.approx(1.0)
    assert solver.lr_factor(60000, s) == pytest.approx(0.1)
    assert solver.lr_factor(80000, s) == pytest.approx(0.01)


def test_constant_warmup_and_no_warmup():
    s = _solver(warmup_method="constant", warmup_iters=10, warmup_factor=0.25, steps=(20,))
    assert solver.lr_factor(9, s) == pytest.approx(0.25)
    assert solver.lr_factor(10, s) == pytest.approx(1.0)
    s = _solver(warmup_iters=0, steps=(5,))
    assert solver.lr_factor(0, s) == 1.0 and solver.lr_factor(5, s) == pytest.approx(0.1)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_bias_norm_and_frozen():
    s = _solver(bias_lr_factor=2.0, weight_decay=1e-4, weight_decay_bias=0.0, weight_decay_norm=0.0)
    net = _Net()
    groups = solver.param_groups(net, s)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(net.conv.weight)]["weight_decay"] == 1e-4
    assert by_param[id(net.conv.bias)]["lr_scale"] == 2.0
    assert by_param[id(net.conv.bias)]["weight_decay"] == 0.0
    assert by_param[id(net.gn.weight)]["weight_decay"] == 0.0
    assert by_param[id(net.gn.bias)]["lr_scale"] == 1.0
    assert id(net.frozen.weight) not in by_param
    opt = solver.build_optimizer(net, s)
    lr = solver.set_lr(opt, 0.02, 0.5)
    assert lr == pytest.approx(0.01)
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.01, 0.01, 0.02])


def test_adamw():
    s = _solver(optimizer="adamw", base_lr=1e-3)
    opt = solver.build_optimizer(_Net(), s)
    assert isinstance(opt, torch.optim.AdamW)


# ----------------------------------------------------------------------------- the fused step


def _steps(fused: bool, state_layout=None, opt="adamw", skip=(False, False, False)):
    """Three optimizer steps on a channels_last conv weight; returns (weight, optimizer)."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(8, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    o = (torch.optim.AdamW([p], lr=0.1, fused=fused) if opt == "adamw"
         else torch.optim.SGD([p], lr=0.1, momentum=0.9, fused=fused))
    for i in range(3):
        g = torch.randn(8, 3, 3, 3, generator=torch.Generator().manual_seed(i))
        p.grad = g.contiguous(memory_format=torch.channels_last)
        if i == 1 and state_layout is not None:  # a state loaded in another layout
            for k, v in o.state[p].items():
                if v.dim() == 4:
                    o.state[p][k] = v.contiguous(memory_format=state_layout)
        if fused:
            o.found_inf = torch.tensor(float(skip[i]))
            solver.align_layouts(o)
        elif skip[i]:
            continue
        o.step()
    return p.detach(), o


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_fused_step_matches_foreach_when_layouts_are_aligned(opt):
    ref, _ = _steps(False, opt=opt)
    got, _ = _steps(True, torch.contiguous_format, opt=opt)  # misaligned state: realigned
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_misaligned_state_is_what_align_layouts_prevents(monkeypatch):
    """Without the realignment the fused kernel pairs the wrong elements (a silent error)."""
    monkeypatch.setattr(solver, "align_layouts", lambda o: None)
    ref, _ = _steps(False)
    got, _ = _steps(True, torch.contiguous_format)
    assert (got - ref).abs().max() > 1e-2


@pytest.mark.parametrize("opt", ["adamw", "sgd"])
def test_found_inf_skips_the_step_on_the_device(opt):
    """A flagged step leaves the weight, the moments and the step count as they were: the
    same as not calling step() at all."""
    ref, ro = _steps(False, opt=opt, skip=(False, True, False))
    got, go = _steps(True, opt=opt, skip=(False, True, False))
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    if opt == "adamw":
        assert float(go.state[next(iter(go.state))]["step"]) == 2


def test_mark_updated_bumps_versions_the_fused_step_does_not():
    p = nn.Parameter(torch.randn(4, 4))
    p.grad = torch.randn(4, 4)
    o = torch.optim.AdamW([p], fused=True)
    before = p._version
    o.step()
    assert p._version == before  # the reason mark_updated exists
    solver.mark_updated(o)
    assert p._version > before


def test_build_optimizer_is_fused():
    m = nn.Conv2d(3, 4, 3)
    for name in ("sgd", "adamw"):
        o = solver.build_optimizer(m, _solver(optimizer=name))
        assert all(g["fused"] for g in o.param_groups)

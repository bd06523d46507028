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

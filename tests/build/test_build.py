"""`mrcnn.build.build`: every mode gets the same model with the same fast-path switches, the
switches are a value (Built.fast), and the weights each purpose calls for are loaded."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from configs import shapes
from mrcnn.build import Built, FastPaths, build, fast_paths
from mrcnn.build import onednn


def _config(tmp_path, **perf):
    c = shapes.get_config("tiny")
    c.device = "cpu"
    c.data.root = str(tmp_path / "data")
    for k, v in perf.items():
        c.perf[k] = v
    return c


def _checkpoint(config, path) -> str:
    from mrcnn.modeling import build_model

    torch.manual_seed(0)
    torch.save({"model": build_model(config.model).state_dict(), "iteration": 1}, path)
    return str(path)


def _module_types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


@pytest.mark.parametrize("perf", [{}, {"exact": True}, {"onednn": False},
                                  {"channels_last": False}])
def test_train_eval_predict_and_bench_get_the_same_switches(tmp_path, perf):
    c = _config(tmp_path, **perf)
    c.init.weights = _checkpoint(c, tmp_path / "w.pth")
    cpu = torch.device("cpu")
    built = {p: build(c, cpu, p, str(tmp_path / "w")) for p in ("train", "eval", "predict")}
    built["bench"] = build(c, cpu, "bench", load=False)
    fast = {p: b.fast for p, b in built.items()}
    assert len(set(fast.values())) == 1, fast  # one decision for every mode
    types = {p: _module_types(b.model) for p, b in built.items()}
    assert all(t == types["train"] for t in types.values())  # the same modules switched
    train_sd = built["train"].model.state_dict()
    for p in ("eval", "predict"):  # the same weights, loaded from the same file
        assert built[p].weights == c.init.weights
        sd = built[p].model.state_dict()
        assert sd.keys() == train_sd.keys()
        assert all(torch.equal(sd[k], train_sd[k]) for k in sd)
        assert not built[p].model.training
    one = next(iter(fast.values()))
    want_onednn = onednn.available() and not c.perf.exact and c.perf.onednn
    assert one.onednn == want_onednn
    assert one.channels_last == (c.perf.channels_last and not c.perf.exact)
    assert ("OneDNNConv2d" in types["eval"]) == want_onednn


def test_fast_paths_defaults_on_the_cpu_and_what_exact_and_export_turn_off(tmp_path):
    c = _config(tmp_path)
    fast = fast_paths(c, "cpu", "eval")
    assert fast.channels_last and fast.onednn == onednn.available()
    c.dtype = "bfloat16"  # oneDNN's packed path is float32 only
    assert not fast_paths(c, "cpu", "train").onednn
    c.dtype = "float32"
    c.perf.exact = True
    exact = fast_paths(c, "cpu", "predict")
    assert not exact.channels_last and not exact.onednn
    c.perf.exact = False
    assert fast_paths(c, "cpu", "export") == FastPaths(prefetch=False)  # the plain model
    c.perf.cuda_graphs = True
    assert not fast_paths(c, "cpu", "train").cuda_graphs  # CUDA only
    with pytest.raises(ValueError, match="purpose 'serve'"):
        fast_paths(c, "cpu", "serve")


def test_inference_purposes_need_weights_and_train_does_not(tmp_path):
    c = _config(tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights to run"):
        build(c, torch.device("cpu"), "eval", str(tmp_path / "empty"))
    built = build(c, torch.device("cpu"), "train", str(tmp_path / "empty"))
    assert isinstance(built, Built) and built.weights is None and built.model.training


def test_the_model_carries_no_hidden_settings(tmp_path):
    """What a switch changed is in Built, not stored on the model as a plain attribute."""
    c = _config(tmp_path)
    model = build(c, torch.device("cpu"), "train").model
    hidden = [k for m in model.modules() for k in vars(m)
              if k.startswith("_mrcnn") or k == "forward"]
    assert hidden == []

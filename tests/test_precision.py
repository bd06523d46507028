"""`mrcnn.precision`: dtype names, the "auto" choice and the autocast that goes with them."""

import pytest
import torch

from configs import r50_fpn_1x, shapes
from mrcnn import config_check, precision
from mrcnn.build import onednn
from mrcnn.build.fast_paths import fast_paths


def _cpu_probes(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize("amx,avx512_bf16,want", [
    (True, True, "bfloat16"), (True, False, "bfloat16"), (False, True, "bfloat16"),
    (False, False, "float32")])
def test_auto_is_bfloat16_only_on_cpus_with_bfloat16_hardware(monkeypatch, amx, avx512_bf16,
                                                              want):
    _cpu_probes(monkeypatch, amx, avx512_bf16)
    assert precision.resolve("auto", "cpu") == want
    assert precision.resolve("auto", torch.device("cpu")) == want


def test_auto_without_the_probes_is_float32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert precision.resolve("auto", "cpu") == "float32"


@pytest.mark.parametrize("name", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_is_kept_whatever_the_hardware(monkeypatch, name):
    _cpu_probes(monkeypatch, False, False)
    assert precision.resolve(name, "cpu") == name


def test_an_unknown_dtype_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'fp32'"):
        precision.resolve("fp32", "cpu")
    with pytest.raises(ValueError, match="'auto'"):
        precision.autocast("cpu", "auto")  # "auto" must be resolved before a loop uses it


def test_config_check_accepts_auto_and_names_a_bad_dtype():
    c = r50_fpn_1x.get_config()
    c.dtype = "auto"
    config_check.validate(c)
    c.dtype = "half"
    with pytest.raises(config_check.ConfigError, match="config.dtype='half'"):
        config_check.validate(c)


@pytest.mark.parametrize("hardware,want", [(True, "bfloat16"), (False, "float32")])
def test_every_purpose_gets_the_resolved_dtype(monkeypatch, hardware, want):
    _cpu_probes(monkeypatch, hardware, hardware)
    c = shapes.get_config()
    assert c.dtype == "auto"
    got = {p: fast_paths(c, "cpu", p) for p in ("train", "eval", "predict", "bench", "export")}
    assert {f.dtype for f in got.values()} == {want}
    # oneDNN's packed convolutions are float32 only: off when auto picks bfloat16.
    runs = {got[p].onednn for p in ("train", "eval", "predict", "bench")}
    assert runs == ({False} if want == "bfloat16" else {onednn.available()})


def test_smoke_configs_compute_in_float32_on_every_cpu(monkeypatch):
    _cpu_probes(monkeypatch, True, True)
    for arg in ("runlocal", "tiny"):
        assert shapes.get_config(arg).dtype == "float32"

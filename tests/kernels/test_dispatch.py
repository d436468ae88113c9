"""kernels.dispatch: which implementation a public kernel function runs, and its overrides."""

import importlib

import pytest
import torch

import kernels
from kernels import dispatch


@pytest.fixture(autouse=True)
def _restore_defaults():
    saved = dict(dispatch._defaults)
    yield
    dispatch._defaults.update(saved)


def test_auto_picks_torch_on_cpu_tensors():
    assert dispatch.resolve_impl("fftconv", None, torch.zeros(1)) == "torch"
    assert dispatch.resolve_impl("scan", "auto", torch.zeros(1)) == "torch"


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    assert dispatch.resolve_impl("fftconv", "triton", torch.zeros(1)) == "triton"  # conftest sets it
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        dispatch.resolve_impl("fftconv", "triton", torch.zeros(1))


def test_triton_missing(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="not installed"):
        dispatch.resolve_impl("scan", "triton", torch.zeros(1))


def test_default_impl_from_config_routes_calls(monkeypatch):
    calls = []
    ft = importlib.import_module("kernels.fftconv.triton")  # kernels.fftconv is the function, not the package

    monkeypatch.setattr(ft, "fftconv_triton", lambda u, k, b: calls.append("triton") or u)
    u, k, b = torch.randn(1, 2, 5), torch.randn(2, 5), torch.randn(2)
    kernels.set_default_impl("fftconv", "triton")
    assert kernels.get_default_impl("fftconv") == "triton"
    kernels.fftconv(u, k, b)
    assert calls == ["triton"]
    kernels.fftconv(u, k, b, impl="torch")  # a call's impl wins over the default
    assert calls == ["triton"]


def test_bad_names_raise():
    with pytest.raises(ValueError, match="unknown kernel op"):
        kernels.set_default_impl("attention", "torch")
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.set_default_impl("scan", "cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        kernels.fftconv(torch.randn(1, 1, 3), torch.randn(1, 3), torch.randn(1), impl="fast")


def test_public_fftconv_paths_agree():
    u, k, b = torch.randn(2, 3, 50), torch.randn(3, 50), torch.randn(3)
    a = kernels.fftconv(u, k, b, impl="triton")
    r = kernels.fftconv(u, k, b, impl="torch")
    assert (a - r).abs().max() <= 2e-6 * r.abs().max()

"""models.layers: apex's fused norms are used when importable, with the same parameters; torch otherwise."""

import sys
import types

import pytest
import torch
from torch import nn

from models.layers import RMSNorm, causal_depthwise_conv, make_norm


def test_torch_norms_without_apex():
    assert isinstance(make_norm("layer", 8, 1e-5), nn.LayerNorm)
    norm = make_norm("rms", 8, 1e-5)
    assert isinstance(norm, RMSNorm) and all(p._no_weight_decay for p in norm.parameters())
    x = torch.randn(3, 8, dtype=torch.float64)
    norm = norm.double()
    with torch.no_grad():
        norm.weight.uniform_()
    expect = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-5) * norm.weight  # mamba_ssm rms_norm_ref
    assert torch.allclose(norm(x), expect, rtol=1e-14, atol=0)


def test_apex_norms_are_picked_up_when_importable(monkeypatch):
    class FusedLayerNorm(nn.LayerNorm):
        pass

    class FusedRMSNorm(RMSNorm):
        pass

    apex = types.ModuleType("apex")
    normalization = types.ModuleType("apex.normalization")
    normalization.FusedLayerNorm, normalization.FusedRMSNorm = FusedLayerNorm, FusedRMSNorm
    monkeypatch.setitem(sys.modules, "apex", apex)
    monkeypatch.setitem(sys.modules, "apex.normalization", normalization)
    layer, rms = make_norm("layer", 8, 1e-5), make_norm("rms", 8, 1e-5)
    assert type(layer) is FusedLayerNorm and type(rms) is FusedRMSNorm
    assert set(layer.state_dict()) == {"weight", "bias"} and set(rms.state_dict()) == {"weight"}


@pytest.mark.parametrize("L", [1, 2, 3, 17])
@pytest.mark.parametrize("k,bias,silu", [(3, True, False), (4, True, True), (4, False, False), (1, True, True)])
def test_causal_depthwise_conv_matches_conv1d(L, k, bias, silu):
    torch.manual_seed(L + k)
    conv = nn.Conv1d(6, 6, k, groups=6, padding=k - 1, bias=bias).double()
    x = torch.randn(2, L, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, L, 6, dtype=torch.float64)
    ref = conv(x.transpose(1, 2))[..., :L].transpose(1, 2)
    ref = torch.nn.functional.silu(ref) if silu else ref
    ref_grads = torch.autograd.grad((ref * w).sum(), [x, *conv.parameters()])
    out = causal_depthwise_conv(x, conv.weight, conv.bias, silu=silu)
    grads = torch.autograd.grad((out * w).sum(), [x, *conv.parameters()])
    assert torch.allclose(out, ref, rtol=1e-13, atol=1e-14)
    for g, r in zip(grads, ref_grads):
        assert g.shape == r.shape and torch.allclose(g, r, rtol=1e-13, atol=1e-14)


def test_causal_depthwise_conv_shape_check():
    with pytest.raises(ValueError, match=r"weight \(C, 1, k\) expected"):
        causal_depthwise_conv(torch.zeros(1, 4, 3), torch.zeros(4, 1, 2), None)

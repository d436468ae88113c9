"""kernels.fftconv.ref: exact causal convolution vs a direct float64 conv, the HyenaDNA goldens, memory bound."""

import pytest
import torch
import torch.nn.functional as F

from kernels.fftconv import ref as fref
from kernels.fftconv.ref import fftconv_ref


def direct_causal_conv(u, k, bias):
    """y[b,d,t] = sum_{s<=t} k[d,s] u[b,d,t-s] + bias[d] u[b,d,t] by an explicit (non-FFT) convolution."""
    L = u.shape[-1]
    y = F.conv1d(F.pad(u, (L - 1, 0)), k.flip(-1)[:, None], groups=u.shape[1])
    return y + bias[:, None] * u


def _inputs(B, D, L, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(B, D, L, generator=g, dtype=dtype)
    k = torch.randn(D, L, generator=g, dtype=dtype) * torch.exp(-torch.arange(L, dtype=dtype) / 50)
    bias = torch.randn(D, generator=g, dtype=dtype)
    return u, k, bias


def _value_and_grads(fn, u, k, bias, w):
    leaves = [t.detach().clone().requires_grad_(True) for t in (u, k, bias)]
    y = fn(*leaves)
    (y * w).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("B,D,L", [(1, 1, 1), (2, 3, 1), (2, 5, 7), (1, 4, 33), (3, 2, 250), (1, 3, 1023)])
def test_matches_direct_convolution_forward_and_backward(B, D, L):
    u, k, bias = _inputs(B, D, L)
    w = torch.randn(B, D, L, dtype=torch.float64)
    y, grads = _value_and_grads(fftconv_ref, u, k, bias, w)
    y_ref, grads_ref = _value_and_grads(direct_causal_conv, u, k, bias, w)
    assert y.dtype == torch.float64
    assert _rel(y, y_ref) < 1e-12
    for g, g_ref in zip(grads, grads_ref):
        assert _rel(g, g_ref) < 1e-12


def test_is_causal():
    u, k, bias = _inputs(1, 2, 64)
    y = fftconv_ref(u, k, bias)
    u2 = u.clone()
    u2[..., 40:] += 100.0  # changing the future must not change the past (beyond FFT rounding)
    assert (fftconv_ref(u2, k, bias)[..., :40] - y[..., :40]).abs().max() < 1e-11
    assert (fftconv_ref(u2, k, bias)[..., 40:] - y[..., 40:]).abs().max() > 1.0


def test_reproduces_hyenadna_golden_cases(golden):
    cases = torch.load(golden / "hyena" / "fftconv.pt", weights_only=True)["cases"]
    assert len(cases) >= 3
    for case in cases:
        y, (du, dk, db) = _value_and_grads(fftconv_ref, case["u"], case["k"], case["D_skip"], case["out_weight"])
        assert (y - case["y"]).abs().max() <= 1e-10, case["L"]
        assert _rel(du, case["grads"]["u"]) < 1e-10
        assert _rel(dk, case["grads"]["k"]) < 1e-10
        assert _rel(db, case["grads"]["D_skip"]) < 1e-10


def test_channel_groups_give_the_same_result(monkeypatch):
    u, k, bias = _inputs(2, 7, 129)
    w = torch.randn(2, 7, 129, dtype=torch.float64)
    y1, g1 = _value_and_grads(fftconv_ref, u, k, bias, w)
    monkeypatch.setattr(fref, "SPECTRUM_BUDGET", 2 * 130 * 2)  # two channels per group -> 4 groups
    assert len(fref._channel_groups(2, 7, 129)) == 4
    y2, g2 = _value_and_grads(fftconv_ref, u, k, bias, w)
    assert _rel(y2, y1) < 1e-14
    for a, b in zip(g2, g1):
        assert _rel(a, b) < 1e-14


def test_backward_saves_only_the_inputs():
    u, k, bias = (t.requires_grad_(True) for t in _inputs(1, 4, 300, torch.float32))
    y = fftconv_ref(u, k, bias)
    saved = y.grad_fn.saved_tensors
    assert sum(t.numel() for t in saved) == u.numel() + k.numel() + bias.numel()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_low_precision_is_upcast(dtype, tol):
    u, k, bias = _inputs(2, 3, 200)
    y64 = fftconv_ref(u, k, bias)
    lo = [t.to(dtype).requires_grad_(True) for t in (u, k, bias)]
    y = fftconv_ref(*lo)
    assert y.dtype == dtype
    # compare against float64 run on the same rounded inputs: only the compute precision differs
    y_exact = fftconv_ref(*(t.detach().double() for t in lo))
    assert _rel(y.double(), y_exact) < tol
    assert _rel(y_exact, y64) < (0.05 if dtype == torch.bfloat16 else 1e-6)
    y.float().sum().backward()
    assert [t.grad.dtype for t in lo] == [dtype] * 3


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((2, 3), (3, 5), (3,)), r"u must be \(B, D, L\)"),
        (((1, 3, 5), (3, 4), (3,)), r"k must be \(D, L\) = \(3, 5\)"),
        (((1, 3, 5), (3, 5), (4,)), r"bias must be \(D,\) = \(3,\)"),
        (((1, 3, 0), (3, 0), (3,)), "L must be >= 1"),
    ],
)
def test_bad_shapes_raise_value_error(shapes, match):
    u, k, bias = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        fftconv_ref(u, k, bias)


def test_integer_input_raises_value_error():
    with pytest.raises(ValueError, match="floating point"):
        fftconv_ref(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2))


def test_inputs_on_two_devices_raise_value_error():
    with pytest.raises(ValueError, match="k is on meta but u is on cpu"):
        fftconv_ref(torch.zeros(1, 2, 3), torch.zeros(2, 3, device="meta"), torch.zeros(2))


def test_no_allocation_exceeds_one_channel_group(monkeypatch):
    """Forward + backward hold spectra of one channel group at a time: no (B, D, 2L) tensor is ever made."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Largest(TorchDispatchMode):
        numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.numel = max(self.numel, t.numel())
            return out

    B, D, L, group = 2, 16, 300, 2
    monkeypatch.setattr(fref, "SPECTRUM_BUDGET", B * group * (L + 1))
    u, k, bias = (t.requires_grad_(True) for t in _inputs(B, D, L, torch.float32))
    with Largest() as mode:
        fftconv_ref(u, k, bias).sum().backward()
    assert mode.numel <= max(B * D * L, B * group * 2 * L) < B * D * 2 * L

"""kernels.selective_scan Triton path (interpreter on CPU) vs selective_scan_ref and the mamba_ssm goldens.

Sizes stay small: the interpreter runs a custom-combine associative scan element by element (~150 µs each).
Small chunks (T = 4..16) and segments (K = 1..2 chunks) exercise the carries across chunks and the
checkpoint restarts of the backward with few elements.
"""

import math

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package (Linux)")

import kernels  # noqa: E402
from kernels.scan.ref import selective_scan_ref  # noqa: E402
from kernels.scan.triton import selective_scan_backward_op, selective_scan_op, selective_scan_triton  # noqa: E402

# max |triton - ref| / max |ref| with the reference in float64 on the same (rounded) inputs
TOL = {torch.float64: 1e-10, torch.float32: 3e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _rel(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-300)).item()


def _make(Bsz, D, N, L, b_layout, c_layout, G=2, full=True, softplus=True, h0=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shape = {"shared": (D, N), "per_batch": (Bsz, N, L), "grouped": (Bsz, G, N, L)}
    x = dict(u=r(Bsz, D, L), delta=0.5 * r(Bsz, D, L) - 1 if softplus else 0.05 + 0.45 * r(Bsz, D, L).abs(),
             A=-(0.2 + 2 * torch.rand(D, N, generator=g, dtype=torch.float64)),
             B=r(*shape[b_layout]), C=r(*shape[c_layout]))
    if full:
        x.update(D=r(D), z=r(Bsz, D, L), delta_bias=r(D) - 1 if softplus else 0.1 * r(D).abs())
    if h0:
        x["initial_state"] = r(Bsz, D, N)
    return x


def _run(fn, inputs, weights, **kw):
    """(out, last, grads) of loss = Σ out·w0 + Σ last·w1 (the last-state gradient is part of the check)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, last = fn(**leaves, return_last_state=True, **kw)
    ((out.double() * weights[0]).sum() + (last.double() * weights[1]).sum()).backward()
    return out.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


def _compare(inputs, dtype, softplus, chunk, segment):
    x = {k: v.to(dtype) for k, v in inputs.items()}
    u, A = x["u"], x["A"]
    w = (torch.randn(u.shape, dtype=torch.float64),
         torch.randn(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64))
    ref = _run(selective_scan_ref, {k: v.double() for k, v in x.items()}, w, delta_softplus=softplus)
    got = _run(selective_scan_triton, x, w, delta_softplus=softplus, chunk=chunk, segment=segment)
    assert got[0].dtype == dtype
    assert _rel(got[0], ref[0]) < TOL[dtype], "out"
    assert _rel(got[1], ref[1]) < TOL[dtype], "last_state"
    for k in x:
        assert got[2][k].dtype == dtype and got[2][k].shape == x[k].shape, k
        assert _rel(got[2][k], ref[2][k]) < TOL[dtype] * 10, k  # gradients sum many rounded terms


GRID = [  # (Bsz, D, N, L, B layout, C layout, full, softplus, h0, chunk, segment)
    (1, 2, 4, 1, "per_batch", "per_batch", True, True, True, 4, 1),
    (2, 4, 4, 7, "shared", "shared", True, True, False, 4, 1),
    (2, 4, 3, 17, "grouped", "grouped", True, True, True, 4, 2),
    (1, 6, 4, 17, "grouped", "per_batch", False, False, True, 8, 1),  # 3 channels per group: BD = 1
    (2, 8, 2, 17, "per_batch", "shared", True, False, False, 16, 1),  # BD = 4, one chunk + tail
    (1, 4, 16, 33, "shared", "grouped", True, True, True, 8, 2),
    (1, 2, 1, 255, "per_batch", "per_batch", True, True, True, 16, 4),
]


@pytest.mark.parametrize("case", GRID, ids=lambda c: f"B{c[0]}D{c[1]}N{c[2]}L{c[3]}-{c[4]}-{c[5]}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_scan_matches_reference(case, dtype):
    Bsz, D, N, L, bl, cl, full, softplus, h0, chunk, segment = case
    inputs = _make(Bsz, D, N, L, bl, cl, full=full, softplus=softplus, h0=h0, seed=L + D)
    if dtype == torch.float16:  # keep the half-precision inputs well inside fp16 range
        inputs = {k: v.clamp(-4, 4) for k, v in inputs.items()}
    _compare(inputs, dtype, softplus, chunk, segment)


def test_triton_scan_bfloat16():
    inputs = {k: v.clamp(-4, 4) for k, v in _make(2, 4, 4, 17, "grouped", "per_batch", seed=5).items()}
    _compare(inputs, torch.bfloat16, True, 8, 1)


def test_triton_scan_float64_tight():
    _compare(_make(2, 4, 4, 37, "grouped", "per_batch", seed=3), torch.float64, True, 8, 2)


def _golden_cases(golden, slow: bool):
    cases = torch.load(golden / "mamba" / "selective_scan.pt", weights_only=True)
    return [c for c in cases if (c["L"] >= 256) == slow]


def _check_golden(case):
    x = {k: v for k, v in case["inputs"].items() if v is not None}
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    out, last = selective_scan_triton(**leaves, delta_softplus=case["delta_softplus"], return_last_state=True,
                                      chunk=16, segment=4)
    (out * case["out_weight"]).sum().backward()
    assert (out - case["out"]).abs().max() <= 1e-10, case["name"]
    assert (last - case["last_state"]).abs().max() <= 1e-10, case["name"]
    for k, v in leaves.items():
        assert _rel(v.grad, case["grads"][k]) <= 1e-10, (case["name"], k)


def test_golden_mamba_scan_short(golden):
    """The mamba_ssm selective_scan_ref goldens with L = 1 and 17 (all layouts and options), float64."""
    for case in _golden_cases(golden, slow=False):
        _check_golden(case)


@pytest.mark.slow
def test_golden_mamba_scan_L256(golden):
    """L = 256 (16 chunks, 4 checkpoint segments) for the three layouts with every option on."""
    for case in _golden_cases(golden, slow=True):
        if case["name"].endswith("_full"):
            _check_golden(case)


def test_dispatch_triton_equals_torch():
    x = {k: v.float() for k, v in _make(2, 4, 4, 9, "per_batch", "per_batch", h0=False).items()}
    a = kernels.selective_scan(**x, delta_softplus=True, impl="triton")
    b = kernels.selective_scan(**x, delta_softplus=True, impl="torch")
    assert _rel(a, b) < 1e-5


def test_checkpoints_are_sparse():
    """The forward keeps the state every chunk·segment steps only: B·D·NP·ceil(L / (T·K)) values."""
    x = _make(1, 2, 3, 40, "per_batch", "per_batch", full=False, h0=False)
    args = [x[k].float() for k in ("u", "delta", "A", "B", "C")]
    out, last, ckpt = selective_scan_op(*args, None, None, None, None, False, 8, 2)
    assert ckpt.shape == (1, 2, math.ceil(40 / 16), 4)
    assert torch.equal(ckpt[:, :, 0], torch.zeros(1, 2, 4))  # the initial state


def test_opcheck():
    x = {k: v.float().requires_grad_(True) for k, v in _make(2, 4, 4, 9, "grouped", "shared").items()}
    args = tuple(x[k] for k in NAMES)
    torch.library.opcheck(selective_scan_op, (*args, True, 4, 2))
    plain = [t.detach() for t in args]
    _, _, ckpt = selective_scan_op(*plain, True, 4, 2)
    bw = (torch.randn(2, 4, 9), torch.randn(2, 4, 4), *plain[:8], ckpt, True, 4, 2)
    torch.library.opcheck(selective_scan_backward_op, bw)


def test_bad_inputs_raise():
    x = {k: v.float() for k, v in _make(2, 4, 4, 9, "per_batch", "per_batch", h0=False).items()}
    with pytest.raises(ValueError, match="B has shape"):
        selective_scan_triton(**{**x, "B": x["B"][..., :5]})
    with pytest.raises(ValueError, match="groups|G dividing"):
        selective_scan_triton(**{**x, "B": torch.randn(2, 3, 4, 9)})
    with pytest.raises(ValueError, match="delta must have shape"):
        selective_scan_triton(**{**x, "delta": x["delta"][:1]})
    with pytest.raises(ValueError, match="chunk"):
        selective_scan_triton(**x, chunk=6)

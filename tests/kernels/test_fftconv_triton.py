"""kernels.fftconv Triton path (interpreter on CPU) vs fftconv_ref and the HyenaDNA goldens, forward and backward."""

import pytest
import torch

pytest.importorskip("triton", reason="the Triton kernels need the triton package (Linux)")

import kernels  # noqa: E402
from kernels.fftconv.ref import fftconv_ref  # noqa: E402
from kernels.fftconv.triton import fftconv_backward_op, fftconv_op, fftconv_triton  # noqa: E402
from kernels.fftconv.triton_launch import fftconv_bwd, fftconv_fwd  # noqa: E402
from kernels.fftconv.triton_plan import COL_TILE, MAX_ROW, MAX_TILE, MIN_N, make_plan  # noqa: E402

# max |triton - ref| / max |ref|, ref evaluated in float64 on the same (rounded) inputs
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def _inputs(Bsz, D, L, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(Bsz, D, L, generator=g).to(dtype)
    k = (torch.randn(D, L, generator=g) * torch.exp(-torch.arange(L) / 50.0)).to(dtype)  # decaying, like Hyena
    bias = torch.randn(D, generator=g).to(dtype)
    return u, k, bias


def _ref_grads(u, k, bias, w):
    leaves = [t.detach().double().requires_grad_(True) for t in (u, k, bias)]
    y = fftconv_ref(*leaves)
    (y * w).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def _check(y, grads, u, k, bias, w, dtype):
    y_ref, g_ref = _ref_grads(u, k, bias, w)
    assert y.dtype == u.dtype
    assert _rel(y, y_ref) < TOL[dtype]
    for name, g, r, t in zip(("u", "k", "bias"), grads, g_ref, (u, k, bias)):
        assert g.dtype == t.dtype and g.shape == t.shape, name
        # bias grads of low-precision inputs sum B·L rounded products
        assert _rel(g, r) < TOL[dtype] * (4 if name == "bias" else 1), name


@pytest.mark.parametrize("L", [1, 7, 17, 255, 1000])
@pytest.mark.parametrize("Bsz,D", [(1, 2), (2, 3), (3, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_public_fftconv_triton_matches_reference(L, Bsz, D, dtype):
    u, k, bias = _inputs(Bsz, D, L, dtype, seed=L + Bsz)
    leaves = [t.clone().requires_grad_(True) for t in (u, k, bias)]
    y = kernels.fftconv(*leaves, impl="triton")
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (y.double() * w).sum().backward()
    _check(y, [t.grad for t in leaves], u, k, bias, w, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fftconv_triton_float64_and_bfloat16(dtype):
    """float64 stays float64 (fp64 dots); bf16 inputs are upcast before every tl.dot."""
    u, k, bias = _inputs(3, 2, 300, dtype)
    w = torch.randn(3, 2, 300, dtype=torch.float64)
    y = fftconv_fwd(u, k, bias)
    assert y.dtype == dtype
    _check(y, fftconv_bwd(w.to(dtype), u, k, bias), u, k, bias, w, dtype)


@pytest.mark.parametrize("L,max_row", [(2000, 256), (3000, 4096)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multipass_dense_column(L, max_row, dtype):
    """N = N1·M with one dense column DFT: forced at small L (max_row=256) and natural at L=3000."""
    plan = make_plan(L, max_row)
    assert not plan.onchip and plan.R2 == 1
    u, k, bias = _inputs(3, 2, L, dtype)
    w = torch.randn(3, 2, L, dtype=torch.float64)
    _check(fftconv_fwd(u, k, bias, plan), fftconv_bwd(w.to(dtype), u, k, bias, plan), u, k, bias, w, dtype)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_multipass_four_step_column(dtype):
    """Column DFT as a second four-step (N1 = R1·R2 = 256): the structure used from L = 2^18 up."""
    L = 20001
    plan = make_plan(L, max_row=256)
    assert (plan.N1, plan.R1, plan.R2, plan.M) == (256, 16, 16, 256)
    u, k, bias = _inputs(2, 1, L, dtype)
    w = torch.randn(2, 1, L, dtype=torch.float64)
    _check(fftconv_fwd(u, k, bias, plan), fftconv_bwd(w.to(dtype), u, k, bias, plan), u, k, bias, w, dtype)


def test_golden_hyena_fftconv(golden):
    """HyenaDNA's fftconv_ref cases in float64 (L = 7 on chip, 1024 on chip, 4096 multi-pass)."""
    cases = torch.load(golden / "hyena" / "fftconv.pt", weights_only=True)["cases"]
    for c in cases:
        leaves = [c[n].clone().requires_grad_(True) for n in ("u", "k", "D_skip")]
        y = fftconv_triton(*leaves)
        (y * c["out_weight"]).sum().backward()
        assert (y - c["y"]).abs().max() <= 1e-10, c["L"]
        for t, n in zip(leaves, ("u", "k", "D_skip")):
            assert _rel(t.grad, c["grads"][n]) <= 1e-10, (c["L"], n)


def test_strided_inputs_and_batch_blocks():
    """u as a transposed view of (B, L, D) and an odd batch (the last pair has one row)."""
    x = torch.randn(5, 130, 4)
    k, bias = torch.randn(4, 130), torch.randn(4)
    y = fftconv_triton(x.transpose(1, 2), k, bias)
    assert _rel(y, fftconv_ref(x.transpose(1, 2).double(), k.double(), bias.double())) < 2e-6


def test_opcheck():
    u, k, bias = (t.requires_grad_(True) for t in _inputs(3, 2, 40, torch.float32))
    torch.library.opcheck(fftconv_op, (u, k, bias))
    g = torch.randn(3, 2, 40)
    torch.library.opcheck(fftconv_backward_op, (g, u.detach(), k.detach(), bias.detach()))


def test_plans_cover_every_length():
    for L in sorted({1, 2, 3} | {x + e for p in range(2, 24) for e in (-1, 0, 1) for x in [1 << p]}):
        if L > (1 << 23):
            continue
        p = make_plan(L)
        assert p.N >= 2 * L - 1 and p.N == p.N1 * p.P * p.Q and p.N >= MIN_N
        assert 16 <= p.P <= 64 and 16 <= p.Q <= 64 and p.M <= (MAX_ROW if L <= 1 << 20 else MAX_TILE)
        if not p.onchip:
            assert p.N1 == p.R1 * p.R2 and 16 <= p.R1 <= 64 and (p.R2 == 1 or 16 <= p.R2 <= 64)
            assert p.M % p.T == 0 and p.M >= MIN_N and p.T >= (16 if p.R2 == 1 else 8)
            assert p.N1 * p.T <= COL_TILE or p.T == 8
    assert make_plan(1 << 20).N == 1 << 21


def test_bad_inputs_raise():
    u, k, bias = _inputs(2, 3, 10, torch.float32)
    with pytest.raises(ValueError, match="k must be"):
        fftconv_triton(u, k[:, :5], bias)
    with pytest.raises(ValueError, match="bias must be"):
        fftconv_triton(u, k, bias[:2])
    with pytest.raises(ValueError, match="floating point"):
        fftconv_triton(u.long(), k, bias)
    with pytest.raises(ValueError, match="too long"):
        make_plan((1 << 23) + 1)


@pytest.mark.slow
def test_one_million_tokens_forward():
    """L = 2^20: FFT size 2^21 = (32·32 column four-step) x (32·64 row DFT), two-level 2^21 twiddles."""
    L = 1 << 20
    plan = make_plan(L)
    assert (plan.N, plan.N1, plan.R1, plan.R2, plan.M, plan.T) == (1 << 21, 1024, 32, 32, 2048, 8)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 1, L, generator=g)
    k = torch.randn(1, L, generator=g) * torch.exp(-torch.arange(L) / 1e5)
    bias = torch.randn(1, generator=g)
    y = fftconv_fwd(u, k, bias, plan)
    assert _rel(y, fftconv_ref(u.double(), k.double(), bias.double())) < 2e-6

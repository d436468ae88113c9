"""Host launchers of the Triton FFT convolution: forward and backward, on-chip or multi-pass by plan.

``fftconv_fwd(u, k, bias)`` and ``fftconv_bwd(grad, u, k, bias)`` take validated, unit-L-stride tensors
(see :mod:`kernels.fftconv.triton`); computation is fp32 (fp64 for float64 inputs). The multi-pass path
processes channels in groups so its work buffers stay under ``WORK_BUDGET`` elements each. The compile-time
parameters of every kernel (constexprs and warps) come from the ``*_meta`` functions, which the compile
test reuses.
"""

from __future__ import annotations

import math

import torch

from kernels.fftconv import triton_fused as fused
from kernels.fftconv import triton_passes as passes
from kernels.fftconv.triton_plan import FFTPlan, dft_matrix, make_plan, twiddle_levels, twiddle_split, twiddle_tile

WORK_BUDGET = 1 << 28  # elements (1 GiB in fp32) per multi-pass work buffer
# tl.dot input precision of the fp32 DFT products, by the precision of the data: tf32 (10-bit mantissa,
# one tensor-core pass) rounds less than bf16/fp16 inputs and outputs already do; fp32 data gets tf32x3
# (three passes, ~fp32 accuracy). A 64-point DFT block costs ~1k flops per element per transform, so
# tf32x3 can make the on-chip path compute-bound. fp64 data always uses exact fp64 dots ("ieee").
DOT_PRECISION = {"half": "tf32", "fp32": "tf32x3"}


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def dot_precision(*data: torch.Tensor) -> str:
    """The ``input_precision`` of every tl.dot for these data tensors (see DOT_PRECISION)."""
    if any(t.dtype == torch.float64 for t in data):
        return "ieee"
    half = all(t.dtype in (torch.float16, torch.bfloat16) for t in data)
    return DOT_PRECISION["half" if half else "fp32"]


def _warps(elems: int) -> int:
    return 8 if elems >= 1024 else 4


def onchip_meta(plan: FFTPlan, prec: str) -> dict:
    """Constexprs of the fused kernels. HP: rows of a [P, Q] tile that can hold samples (L <= N/2);
    P itself when P/2 would be below tl.dot's 16."""
    return dict(P=plan.P, Q=plan.Q, HP=plan.P // 2 if plan.P >= 32 else plan.P, PREC=prec,
                num_warps=_warps(plan.N))


def row_meta(plan: FFTPlan, prec: str) -> dict:
    return dict(P=plan.P, Q=plan.Q, N1=plan.N1, SHIFT=twiddle_split(plan.N), PREC=prec, num_warps=8)


def col_meta(plan: FFTPlan, prec: str) -> dict:
    return dict(M=plan.M, N1=plan.N1, R1=plan.R1, R2=plan.R2, T=plan.T, PREC=prec,
                num_warps=_warps(plan.N1 * plan.T))


class _Tables:
    """The DFT matrices and twiddles one plan needs, on the device, in the compute dtype; the dot precision."""

    def __init__(self, plan: FFTPlan, dtype, device, prec: str):
        self.prec = prec
        self.fp = dft_matrix(plan.P, dtype, device)
        self.fq = dft_matrix(plan.Q, dtype, device)
        self.tw = twiddle_tile(plan.M, plan.P, plan.Q, dtype, device)
        if not plan.onchip:
            self.f1 = dft_matrix(plan.R1, dtype, device)
            self.f2 = dft_matrix(plan.R2, dtype, device) if plan.R2 > 1 else self.f1
            self.tw1 = twiddle_tile(plan.N1, plan.R1, plan.R2, dtype, device)
            self.lo, self.hi = twiddle_levels(plan.N, dtype, device)

    def row_args(self, N: int):
        """Row-pass table arguments: the size-M tables and the two-level twiddle tables of size N."""
        return (self.fp, self.fq, self.tw, self.lo, self.hi, self.lo.shape[1], self.hi.shape[1], N)


def _pair_blocks(npairs: int, nchan: int, device: torch.device) -> tuple[int, int]:
    """(blocks, pairs per block): enough programs to fill the device, few enough to reuse kf."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    blocks = max(1, min(npairs, math.ceil(2 * sms / max(nchan, 1))))
    per = math.ceil(npairs / blocks)
    return math.ceil(npairs / per), per


def fftconv_fwd(u, k, bias, plan: FFTPlan | None = None) -> torch.Tensor:
    """y = causal_conv(u, k)[:L] + bias·u with the Triton kernels; y has u's dtype."""
    Bn, D, L = u.shape
    plan = plan or make_plan(L)
    dt = compute_dtype(u, k, bias)
    tabs = _Tables(plan, dt, u.device, dot_precision(u, k))
    y = torch.empty_like(u, memory_format=torch.contiguous_format)
    if plan.onchip:
        kf = _spectrum_onchip(k, plan, tabs, dt)
        blocks, per = _pair_blocks((Bn + 1) // 2, D, u.device)
        fused.fused_fwd_kernel[(D, blocks)](
            u, kf, bias, y, tabs.fp, tabs.fq, tabs.tw, Bn, L, per, u.stride(0), u.stride(1), y.stride(0),
            y.stride(1), 1.0 / plan.N, **onchip_meta(plan, tabs.prec))
        return y
    for d0, d1 in _channel_groups(Bn, D, plan):
        kf = _spectrum_passes(k[d0:d1], plan, tabs, dt)
        w = _col_fwd(u[:, d0:d1], plan, tabs, dt)
        passes.row_conv_kernel[(d1 - d0, plan.N1)](
            w, kf, *tabs.row_args(plan.N), w.shape[1], w[0].numel(), **row_meta(plan, tabs.prec))
        _col_inv(w, y[:, d0:d1], plan, tabs, aux=u[:, d0:d1], bias=bias[d0:d1])
    return y


def fftconv_bwd(grad, u, k, bias, plan: FFTPlan | None = None):
    """(du, dk, dbias) for y = fftconv(u, k, bias) and dL/dy = grad; each in its input's dtype."""
    Bn, D, L = u.shape
    plan = plan or make_plan(L)
    dt = compute_dtype(u, k, bias, grad)
    tabs = _Tables(plan, dt, u.device, dot_precision(u, k, grad))
    du = torch.empty_like(u, memory_format=torch.contiguous_format)
    if plan.onchip:
        kf = _spectrum_onchip(k, plan, tabs, dt)
        blocks, per = _pair_blocks((Bn + 1) // 2, D, u.device)
        dkp = torch.empty(blocks, D, L, device=u.device, dtype=dt)
        dbp = torch.empty(blocks, D, device=u.device, dtype=dt)
        fused.fused_bwd_kernel[(D, blocks)](
            u, grad, kf, bias, du, dkp, dbp, tabs.fp, tabs.fq, tabs.tw, Bn, L, per, u.stride(0), u.stride(1),
            grad.stride(0), grad.stride(1), du.stride(0), du.stride(1), 1.0 / plan.N, **onchip_meta(plan, tabs.prec))
        return du, dkp.sum(0).to(k.dtype), dbp.sum(0).to(bias.dtype)
    dk = torch.empty(D, L, device=u.device, dtype=dt)
    dbias = torch.empty(D, device=u.device, dtype=dt)
    for d0, d1 in _channel_groups(Bn, D, plan):
        kf = _spectrum_passes(k[d0:d1], plan, tabs, dt)
        wu = _col_fwd(u[:, d0:d1], plan, tabs, dt)
        wg, part = _col_fwd(grad[:, d0:d1], plan, tabs, dt, dot_with=u[:, d0:d1])
        dbias[d0:d1] = part.sum(dim=(0, 2))
        wk = torch.empty(2, 1, d1 - d0, plan.N1, plan.M, device=u.device, dtype=dt)
        passes.row_bwd_kernel[(d1 - d0, plan.N1)](
            wu, wg, wk, kf, *tabs.row_args(plan.N), wu.shape[1], wu[0].numel(), **row_meta(plan, tabs.prec))
        _col_inv(wg, du[:, d0:d1], plan, tabs, aux=grad[:, d0:d1], bias=bias[d0:d1])
        _col_inv(wk, dk[None, d0:d1], plan, tabs, pair=False)
    return du, dk.to(k.dtype), dbias.to(bias.dtype)


def _channel_groups(Bn: int, D: int, plan: FFTPlan):
    per_chan = 2 * ((Bn + 1) // 2) * plan.N  # work elements of one channel (both planes)
    size = max(1, min(D, WORK_BUDGET // per_chan))
    return [(d0, min(D, d0 + size)) for d0 in range(0, D, size)]


def _spectrum_onchip(k, plan: FFTPlan, tabs: _Tables, dt) -> torch.Tensor:
    D = k.shape[0]
    kf = torch.empty(D, 2, plan.P, plan.Q, device=k.device, dtype=dt)
    fused.spectrum_kernel[(D,)](k, kf, tabs.fp, tabs.fq, tabs.tw, plan.L, k.stride(0), **onchip_meta(plan, tabs.prec))
    return kf


def _spectrum_passes(k, plan: FFTPlan, tabs: _Tables, dt) -> torch.Tensor:
    """The filter spectrum of a channel group: column pass on k (one real row) then the row DFTs."""
    Dc = k.shape[0]
    w = _col_fwd(k[None], plan, tabs, dt, pair=False)
    kf = torch.empty(2, Dc, plan.N1, plan.P, plan.Q, device=k.device, dtype=dt)
    passes.row_spectrum_kernel[(Dc, plan.N1)](w, kf, *tabs.row_args(plan.N), w[0].numel(), **row_meta(plan, tabs.prec))
    return kf


def _col_fwd(x, plan: FFTPlan, tabs: _Tables, dt, pair: bool = True, dot_with=None):
    """Column pass over x (B, Dc, L) -> work (2, pairs, Dc, N1, M); with ``dot_with`` also Σ x·v partials."""
    Bn, Dc, _ = x.shape
    npairs = (Bn + 1) // 2 if pair else Bn
    w = torch.empty(2, npairs, Dc, plan.N1, plan.M, device=x.device, dtype=dt)
    grid = (Dc, npairs, plan.M // plan.T)
    part = torch.empty(npairs, Dc, grid[2], device=x.device, dtype=dt) if dot_with is not None else w
    v = dot_with if dot_with is not None else x
    passes.col_fwd_kernel[grid](
        x, v, w, part, tabs.f1, tabs.f2, tabs.tw1, Bn, plan.L, x.stride(0), x.stride(1), v.stride(0), v.stride(1),
        w[0].numel(), PAIR=pair, DOT=dot_with is not None, **col_meta(plan, tabs.prec))
    return (w, part) if dot_with is not None else w


def _col_inv(w, y, plan: FFTPlan, tabs: _Tables, pair: bool = True, aux=None, bias=None) -> None:
    """Inverse column pass: work (2, pairs, Dc, N1, M) -> y (B, Dc, L) (+ bias·aux). ``pair``: the real and
    imaginary parts are rows 2i and 2i+1 of y; else only the real part is kept, as row i (the dk case)."""
    Bn, Dc, _ = y.shape
    grid = (Dc, w.shape[1], plan.M // plan.T)
    a = aux if aux is not None else y
    passes.col_inv_kernel[grid](
        w, a, bias if bias is not None else w, y, tabs.f1, tabs.f2, tabs.tw1, Bn, plan.L, a.stride(0), a.stride(1),
        y.stride(0), y.stride(1), w[0].numel(), 1.0 / plan.N, PAIR=pair, AUX=aux is not None,
        **col_meta(plan, tabs.prec))

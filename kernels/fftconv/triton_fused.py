"""On-chip FFT convolution (FFT size N = P·Q <= 4096): one program per (channel, block of batch pairs).

Layout legend: u, y, g (grad of y), du: (B, D, L) with unit stride along L; k, dk: (D, L); bias: (D,);
kf: (D, 2, P, Q) the filter spectrum in the transposed order of :func:`fft_tile`.

Two real sequences ride in one complex transform: rows b = 2i and 2i+1 of the batch become the real and
imaginary parts. Because the filter k is real, conv(u0 + i·u1, k) = conv(u0, k) + i·conv(u1, k), so the
real and imaginary parts of the result are the two outputs — half the transforms of a real FFT per row,
with no unpacking step.

Only the first HP = P/2 rows of a tile can hold samples (L <= N/2), so sequences are loaded and stored
as [HP, Q] tiles and the first and last DFT dots use half of F_P (when P >= 32; tl.dot needs 16).

Memory traffic per call: u read once, y written once (plus kf, D·N complex, read from L2 by every batch
block). The backward reads u and g, writes du, and accumulates the dk spectrum Σ_b conj(U_b)·G_b on chip.
"""

import triton
import triton.language as tl

from kernels.fftconv.triton_fft import cmul, cmul_conj, fft_tile, ifft_tile, load_cblock, load_ctab


@triton.jit
def _lim(b, nbatch, L):
    """Valid length of batch row b: L, or 0 past the batch (a scalar bound keeps masks cheap)."""
    return tl.where(b < nbatch, L, 0)


@triton.jit
def _rows(ptr, b0, d, nbatch, sb, sd, n, L):
    """The pair of rows (b0, b0 + 1) of channel d as two real [P, Q] tiles (zeros past L / past B)."""
    base = ptr + d * sd
    x0 = tl.load(base + b0 * sb + n, mask=n < _lim(b0, nbatch, L), other=0.0)
    x1 = tl.load(base + (b0 + 1) * sb + n, mask=n < _lim(b0 + 1, nbatch, L), other=0.0)
    return x0, x1


@triton.jit
def _store_rows(ptr, b0, d, nbatch, sb, sd, n, L, v0, v1):
    base = ptr + d * sd
    tl.store(base + b0 * sb + n, v0.to(ptr.dtype.element_ty), mask=n < _lim(b0, nbatch, L))
    tl.store(base + (b0 + 1) * sb + n, v1.to(ptr.dtype.element_ty), mask=n < _lim(b0 + 1, nbatch, L))


@triton.jit
def _tables(fp_ptr, fq_ptr, tw_ptr, P: tl.constexpr, Q: tl.constexpr, HP: tl.constexpr):
    """F_P's first HP columns (forward) and first HP rows (inverse), F_Q and the twiddles W_{PQ}^{k1·q}."""
    far, fai = load_cblock(fp_ptr, P, HP, P, P * P)
    fbr, fbi = load_cblock(fp_ptr, HP, P, P, P * P)
    fqr, fqi = load_ctab(fq_ptr, Q, Q, 1)
    twr, twi = load_ctab(tw_ptr, P, Q, 1)
    return far, fai, fbr, fbi, fqr, fqi, twr, twi


@triton.jit
def spectrum_kernel(k_ptr, kf_ptr, fp_ptr, fq_ptr, tw_ptr, L, sk_d,
                    P: tl.constexpr, Q: tl.constexpr, HP: tl.constexpr, PREC: tl.constexpr):
    """kf[d] = DFT_N of k[d] zero-padded to N = P·Q (grid: D)."""
    d = tl.program_id(0).to(tl.int64)
    acc = kf_ptr.dtype.element_ty
    n = tl.arange(0, HP)[:, None] * Q + tl.arange(0, Q)[None, :]
    x = tl.load(k_ptr + d * sk_d + n, mask=n < L, other=0.0).to(acc)
    far, fai, _, _, fqr, fqi, twr, twi = _tables(fp_ptr, fq_ptr, tw_ptr, P, Q, HP)
    yr, yi = fft_tile(x, tl.zeros_like(x), far, fai, fqr, fqi, twr, twi, PREC)
    off = tl.arange(0, P)[:, None] * Q + tl.arange(0, Q)[None, :]
    tl.store(kf_ptr + d * 2 * P * Q + off, yr)
    tl.store(kf_ptr + d * 2 * P * Q + P * Q + off, yi)


@triton.jit
def fused_fwd_kernel(u_ptr, kf_ptr, bias_ptr, y_ptr, fp_ptr, fq_ptr, tw_ptr,
                     nbatch, L, pairs_per_prog, su_b, su_d, sy_b, sy_d, scale,
                     P: tl.constexpr, Q: tl.constexpr, HP: tl.constexpr, PREC: tl.constexpr):
    """y = irfft(fft(u) · kf)[:L] · scale + bias·u for the pairs of one batch block (grid: D, blocks)."""
    d = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    acc = kf_ptr.dtype.element_ty
    n = tl.arange(0, HP)[:, None] * Q + tl.arange(0, Q)[None, :]
    far, fai, fbr, fbi, fqr, fqi, twr, twi = _tables(fp_ptr, fq_ptr, tw_ptr, P, Q, HP)
    kr, ki = load_ctab(kf_ptr + d * 2 * P * Q, P, Q, 1)
    bias = tl.load(bias_ptr + d).to(acc)
    for i in range(pairs_per_prog):
        b0 = 2 * (blk * pairs_per_prog + i).to(tl.int64)
        x0, x1 = _rows(u_ptr, b0, d, nbatch, su_b, su_d, n, L)
        x0, x1 = x0.to(acc), x1.to(acc)
        sr, si = fft_tile(x0, x1, far, fai, fqr, fqi, twr, twi, PREC)
        sr, si = cmul(sr, si, kr, ki)
        yr, yi = ifft_tile(sr, si, fbr, fbi, fqr, fqi, twr, twi, PREC)
        _store_rows(y_ptr, b0, d, nbatch, sy_b, sy_d, n, L, yr * scale + bias * x0, yi * scale + bias * x1)


@triton.jit
def fused_bwd_kernel(u_ptr, g_ptr, kf_ptr, bias_ptr, du_ptr, dkp_ptr, dbp_ptr, fp_ptr, fq_ptr, tw_ptr,
                     nbatch, L, pairs_per_prog, su_b, su_d, sg_b, sg_d, sdu_b, sdu_d, scale,
                     P: tl.constexpr, Q: tl.constexpr, HP: tl.constexpr, PREC: tl.constexpr):
    """Gradients for one channel and one batch block (grid: D, blocks).

    du = irfft(G · conj(kf))[:L] · scale + bias·g          (correlation with k)
    dk partial = irfft(Σ_pairs conj(U) · G)[:L] · scale  → dkp[blk, d, :L]   (real part: see module doc)
    dbias partial = Σ g·u                                → dbp[blk, d]
    With N >= 2L the circular correlations equal the linear ones on [0, L): the wrapped terms hit the
    zero padding.
    """
    d = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    acc = kf_ptr.dtype.element_ty
    n = tl.arange(0, HP)[:, None] * Q + tl.arange(0, Q)[None, :]
    far, fai, fbr, fbi, fqr, fqi, twr, twi = _tables(fp_ptr, fq_ptr, tw_ptr, P, Q, HP)
    kr, ki = load_ctab(kf_ptr + d * 2 * P * Q, P, Q, 1)
    bias = tl.load(bias_ptr + d).to(acc)
    ar = tl.zeros((P, Q), acc)
    ai = tl.zeros((P, Q), acc)
    db = tl.zeros((HP, Q), acc)
    for i in range(pairs_per_prog):
        b0 = 2 * (blk * pairs_per_prog + i).to(tl.int64)
        u0, u1 = _rows(u_ptr, b0, d, nbatch, su_b, su_d, n, L)
        g0, g1 = _rows(g_ptr, b0, d, nbatch, sg_b, sg_d, n, L)
        u0, u1, g0, g1 = u0.to(acc), u1.to(acc), g0.to(acc), g1.to(acc)
        db += u0 * g0 + u1 * g1
        ur, ui = fft_tile(u0, u1, far, fai, fqr, fqi, twr, twi, PREC)
        gr, gi = fft_tile(g0, g1, far, fai, fqr, fqi, twr, twi, PREC)
        cr, ci = cmul_conj(gr, gi, ur, ui)
        ar += cr
        ai += ci
        sr, si = cmul_conj(gr, gi, kr, ki)
        xr, xi = ifft_tile(sr, si, fbr, fbi, fqr, fqi, twr, twi, PREC)
        _store_rows(du_ptr, b0, d, nbatch, sdu_b, sdu_d, n, L, xr * scale + bias * g0, xi * scale + bias * g1)
    kr_t, _ = ifft_tile(ar, ai, fbr, fbi, fqr, fqi, twr, twi, PREC)
    row = blk.to(tl.int64) * tl.num_programs(0) + d
    tl.store(dkp_ptr + row * L + n, kr_t * scale, mask=n < L)
    tl.store(dbp_ptr + row, tl.sum(tl.sum(db, axis=1), axis=0))

"""Triton building blocks of the four-step FFT: complex ``tl.dot`` products, table loads, tile transforms.

Complex tiles are pairs of real tiles (re, im) in the compute dtype (fp32, or fp64 for float64 inputs).
Tables come from :mod:`kernels.fftconv.triton_plan` as (2, rows, cols) tensors: plane 0 real, plane 1
imaginary. ``SIGN = -1`` conjugates a table on load, which turns a forward DFT into an inverse one.

Four-step on a [P, Q] tile X (sequence index n = Q·p + q, i.e. the tile as loaded row-major)::

    A = F_P @ X            DFT over p
    A = A * W_{PQ}^{k1·q}  twiddle
    Y = A @ F_Q            DFT over q;   Y[k1, k2] = Xhat[k1 + P·k2]   (frequencies come out transposed)

and the inverse undoes it in reverse order with conjugate tables. Products with a filter spectrum are
elementwise, so the transposed frequency order never has to be undone as long as the spectrum is stored
in the same order (it is computed by the same code).
"""

import triton
import triton.language as tl


@triton.jit
def cmm(ar, ai, br, bi, PREC: tl.constexpr):
    """(ar + i·ai) @ (br + i·bi) with ``tl.dot``, accumulated in the operands' dtype."""
    odt = ar.dtype
    rr = tl.dot(ar, br, input_precision=PREC, out_dtype=odt) - tl.dot(ai, bi, input_precision=PREC, out_dtype=odt)
    ri = tl.dot(ar, bi, input_precision=PREC, out_dtype=odt) + tl.dot(ai, br, input_precision=PREC, out_dtype=odt)
    return rr, ri


@triton.jit
def cmul(ar, ai, br, bi):
    """Elementwise complex product."""
    return ar * br - ai * bi, ar * bi + ai * br


@triton.jit
def cmul_conj(ar, ai, br, bi):
    """Elementwise a · conj(b)."""
    return ar * br + ai * bi, ai * br - ar * bi


@triton.jit
def load_ctab(ptr, R: tl.constexpr, C: tl.constexpr, SIGN: tl.constexpr):
    """A (2, R, C) table as a complex [R, C] tile; SIGN = -1 conjugates it."""
    off = tl.arange(0, R)[:, None] * C + tl.arange(0, C)[None, :]
    return tl.load(ptr + off), tl.load(ptr + R * C + off) * SIGN


@triton.jit
def load_cblock(ptr, R: tl.constexpr, C: tl.constexpr, LD: tl.constexpr, PLANE: tl.constexpr):
    """The top-left [R, C] block of a (2, ., LD) table as a complex tile (row stride LD, plane size PLANE)."""
    off = tl.arange(0, R)[:, None] * LD + tl.arange(0, C)[None, :]
    return tl.load(ptr + off), tl.load(ptr + PLANE + off)


@triton.jit
def twiddle2(e, lo_ptr, hi_ptr, NLO, NHI, SHIFT: tl.constexpr, SIGN: tl.constexpr):
    """W_N^e for an integer tile e in [0, N) from two small tables (2, NLO) and (2, NHI), NLO = 2^SHIFT.

    W^e = W^{hi·2^SHIFT} · W^{lo}: two gathers from L1/L2-resident tables instead of an N-entry table
    (which at N = 2^21 would be as large as the data) or in-kernel sin/cos of large arguments.
    """
    lo = e & ((1 << SHIFT) - 1)
    hi = e >> SHIFT
    lr = tl.load(lo_ptr + lo)
    li = tl.load(lo_ptr + NLO + lo)
    hr = tl.load(hi_ptr + hi)
    hi_ = tl.load(hi_ptr + NHI + hi)
    wr, wi = cmul(lr, li, hr, hi_)
    return wr, wi * SIGN


@triton.jit
def fft_tile(xr, xi, fpr, fpi, fqr, fqi, twr, twi, PREC: tl.constexpr):
    """Forward four-step DFT of a [P, Q] tile (tables loaded with SIGN = +1); output in [k1, k2] order.

    The input may be only the first HP rows ([HP, Q], the rest zero) with F_P given as its first HP
    columns ([P, HP]): zero padding to N >= 2L leaves rows p >= P/2 empty, so half of that dot is skipped."""
    ar, ai = cmm(fpr, fpi, xr, xi, PREC)
    ar, ai = cmul(ar, ai, twr, twi)
    return cmm(ar, ai, fqr, fqi, PREC)


@triton.jit
def ifft_tile(yr, yi, fpr, fpi, fqr, fqi, twr, twi, PREC: tl.constexpr):
    """Unscaled inverse of :func:`fft_tile` (same tables, conjugated here): [k1, k2] order in, [p, q] out.

    With F_P given as its first HP rows ([HP, P]) only output rows p < HP are formed (those below L)."""
    br, bi = cmm(yr, yi, fqr, -fqi, PREC)
    br, bi = cmul_conj(br, bi, twr, twi)
    return cmm(fpr, -fpi, br, bi, PREC)


@triton.jit
def col_dft(xr, xi, f1_ptr, f2_ptr, tw_ptr, R1: tl.constexpr, R2: tl.constexpr, T: tl.constexpr,
            SIGN: tl.constexpr, PREC: tl.constexpr):
    """DFT of size N1 = R1·R2 down the columns of T independent sequences.

    Input: [R1, R2·T] tile, element (r1, r2·T + t) = x_t[R2·r1 + r2] (natural order along the sequence).
    Output: [R1·T, R2] tile, element (k1·T + t, k2) = xhat_t[k1 + R1·k2]. With R2 == 1 the DFT is one
    dense [R1, R1] matrix and the output is [R1, T]: (k1, t) = xhat_t[k1]. SIGN = -1: inverse (unscaled).
    """
    fr, fi = load_ctab(f1_ptr, R1, R1, SIGN)
    ar, ai = cmm(fr, fi, xr, xi, PREC)
    # single exit: the compiler keeps visiting code after a return inside a constexpr if
    if R2 > 1:
        # twiddle W_{N1}^{k1·r2}, broadcast over t
        k1 = tl.arange(0, R1)[:, None]
        r2 = tl.arange(0, R2 * T)[None, :] // T
        twr = tl.load(tw_ptr + k1 * R2 + r2)
        twi = tl.load(tw_ptr + R1 * R2 + k1 * R2 + r2) * SIGN
        ar, ai = cmul(ar, ai, twr, twi)
        # bring r2 to the contracted (last) axis: [R1, R2, T] -> [R1, T, R2] -> [R1·T, R2]
        ar = tl.reshape(tl.permute(tl.reshape(ar, (R1, R2, T)), (0, 2, 1)), (R1 * T, R2))
        ai = tl.reshape(tl.permute(tl.reshape(ai, (R1, R2, T)), (0, 2, 1)), (R1 * T, R2))
        gr, gi = load_ctab(f2_ptr, R2, R2, SIGN)
        ar, ai = cmm(ar, ai, gr, gi, PREC)
    return ar, ai

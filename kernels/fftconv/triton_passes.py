"""Multi-pass FFT convolution for FFT sizes that do not fit one program (N = N1 · M, M = P·Q <= 4096).

Index legend: time n = M·n1 + n2 (n1 < N1, n2 < M); frequency f = f1 + N1·f2.
Work buffers ``w``: (2, pairs, Dc, N1, M) fp32/fp64 — plane 0 real, plane 1 imaginary — row f1, column n2.
Filter spectrum ``kf``: (2, Dc, N1, P, Q), each row in the transposed order of :func:`fft_tile`.

    column pass   w[f1, n2]  = Σ_n1 x[M·n1 + n2] W_N1^{n1·f1}                 (T columns per program)
    row pass      w[f1, :]  <- W_N^{-n2·f1} · iDFT_M( kf[f1] · DFT_M( W_N^{n2·f1} · w[f1, :] ) )
    inverse col.  y[M·n1 + n2] = scale · Σ_f1 w[f1, n2] W_N1^{-n1·f1}  (+ bias·aux),  only n < L stored

Bytes per (batch row, time step) in fp32, forward: the column pass reads u (4) and writes the complex
work (2·N/L·8/2 = 8, two rows share one complex sequence); the row pass reads and writes it (16); the
inverse column pass reads it (8), reads u and writes y (8): ~44 B, against ~100 B for torch.fft's
rfft / multiply / irfft / slice / add chain. Rows n1 >= N1/2 of the input are zero padding (L <= N/2).
"""

import triton
import triton.language as tl

from kernels.fftconv.triton_fft import cmul, cmul_conj, col_dft, fft_tile, ifft_tile, load_ctab, twiddle2


@triton.jit
def _col_tile_index(c0, M: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, T: tl.constexpr):
    """Sequence index n1 and column t of the input tile of :func:`col_dft` ([R1, R2·T], natural order)."""
    j = tl.arange(0, R2 * T)[None, :]
    n1 = tl.arange(0, R1)[:, None] * R2 + j // T
    return n1, c0 + j % T


@triton.jit
def _col_out_index(c0, R1: tl.constexpr, R2: tl.constexpr, T: tl.constexpr):
    """Frequency (or, inverse, time) index n1 and column of the output tile of :func:`col_dft`."""
    if R2 == 1:  # [R1, T]
        n1 = tl.arange(0, R1)[:, None]
        col = c0 + tl.arange(0, T)[None, :]
    else:  # [R1·T, R2]
        r = tl.arange(0, R1 * T)[:, None]
        n1 = r // T + R1 * tl.arange(0, R2)[None, :]
        col = c0 + r % T
    return n1, col


@triton.jit
def col_fwd_kernel(x_ptr, v_ptr, w_ptr, part_ptr, f1_ptr, f2_ptr, tw_ptr,
                   nbatch, L, sx_b, sx_d, sv_b, sv_d, w_plane,
                   M: tl.constexpr, N1: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, T: tl.constexpr,
                   PAIR: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """Column DFTs of real rows (grid: Dc, pairs, M/T). PAIR: rows 2i, 2i+1 -> one complex sequence
    (else row i alone). DOT: also store Σ x·v over the tile to part[pair, d, column block] (the bias grad)."""
    d = tl.program_id(0).to(tl.int64)
    pair = tl.program_id(1).to(tl.int64)
    cb = tl.program_id(2)
    ndc = tl.num_programs(0)
    acc = w_ptr.dtype.element_ty
    n1, col = _col_tile_index(cb * T, M, R1, R2, T)
    n = n1 * M + col
    b0 = 2 * pair if PAIR else pair
    m0 = n < tl.where(b0 < nbatch, L, 0)  # a scalar bound per row keeps the masks cheap
    m1 = n < tl.where(b0 + 1 < nbatch, L, 0)
    x0 = tl.load(x_ptr + b0 * sx_b + d * sx_d + n, mask=m0, other=0.0).to(acc)
    x1 = tl.zeros_like(x0)
    if PAIR:
        x1 = tl.load(x_ptr + (b0 + 1) * sx_b + d * sx_d + n, mask=m1, other=0.0).to(acc)
    if DOT:
        v0 = tl.load(v_ptr + b0 * sv_b + d * sv_d + n, mask=m0, other=0.0).to(acc)
        v1 = tl.load(v_ptr + (b0 + 1) * sv_b + d * sv_d + n, mask=m1, other=0.0).to(acc)
        part = tl.sum(tl.sum(x0 * v0 + x1 * v1, axis=1), axis=0)
        tl.store(part_ptr + (pair * ndc + d) * tl.num_programs(2) + cb, part)
    yr, yi = col_dft(x0, x1, f1_ptr, f2_ptr, tw_ptr, R1, R2, T, 1, PREC)
    f1, col = _col_out_index(cb * T, R1, R2, T)
    off = ((pair * ndc + d) * N1 + f1) * M + col
    tl.store(w_ptr + off, yr)
    tl.store(w_ptr + w_plane + off, yi)


@triton.jit
def col_inv_kernel(w_ptr, aux_ptr, bias_ptr, y_ptr, f1_ptr, f2_ptr, tw_ptr,
                   nbatch, L, sa_b, sa_d, sy_b, sy_d, w_plane, scale,
                   M: tl.constexpr, N1: tl.constexpr, R1: tl.constexpr, R2: tl.constexpr, T: tl.constexpr,
                   PAIR: tl.constexpr, AUX: tl.constexpr, PREC: tl.constexpr):
    """Inverse column DFTs back to time (grid: Dc, pairs, M/T): y = scale·Re/Im (+ bias·aux), n < L only.
    PAIR: the real part goes to row 2i, the imaginary part to row 2i+1 (else: the real part to row i)."""
    d = tl.program_id(0).to(tl.int64)
    pair = tl.program_id(1).to(tl.int64)
    cb = tl.program_id(2)
    ndc = tl.num_programs(0)
    f1, col = _col_tile_index(cb * T, M, R1, R2, T)
    off = ((pair * ndc + d) * N1 + f1) * M + col
    xr, xi = col_dft(tl.load(w_ptr + off), tl.load(w_ptr + w_plane + off), f1_ptr, f2_ptr, tw_ptr,
                     R1, R2, T, -1, PREC)
    n1, col = _col_out_index(cb * T, R1, R2, T)
    n = n1 * M + col
    b0 = 2 * pair if PAIR else pair
    xr = xr * scale
    if AUX:
        bias = tl.load(bias_ptr + d).to(xr.dtype)
        a0 = tl.load(aux_ptr + b0 * sa_b + d * sa_d + n, mask=n < tl.where(b0 < nbatch, L, 0), other=0.0)
        xr += bias * a0.to(xr.dtype)
    tl.store(y_ptr + b0 * sy_b + d * sy_d + n, xr.to(y_ptr.dtype.element_ty), mask=n < tl.where(b0 < nbatch, L, 0))
    if PAIR:
        xi = xi * scale
        if AUX:
            a1 = tl.load(aux_ptr + (b0 + 1) * sa_b + d * sa_d + n, mask=n < tl.where(b0 + 1 < nbatch, L, 0), other=0.0)
            xi += bias * a1.to(xi.dtype)
        tl.store(y_ptr + (b0 + 1) * sy_b + d * sy_d + n, xi.to(y_ptr.dtype.element_ty),
                 mask=n < tl.where(b0 + 1 < nbatch, L, 0))


@triton.jit
def _row_setup(fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N, f1,
               P: tl.constexpr, Q: tl.constexpr, SHIFT: tl.constexpr):
    """Row-pass constants: the size-M tables and the twiddles W_N^{n2·f1} of row f1."""
    n2 = tl.arange(0, P)[:, None] * Q + tl.arange(0, Q)[None, :]
    wr, wi = twiddle2((n2 * f1) & (N - 1), lo_ptr, hi_ptr, NLO, NHI, SHIFT, 1)
    fpr, fpi = load_ctab(fp_ptr, P, P, 1)
    fqr, fqi = load_ctab(fq_ptr, Q, Q, 1)
    twr, twi = load_ctab(tw_ptr, P, Q, 1)
    return n2, wr, wi, fpr, fpi, fqr, fqi, twr, twi


@triton.jit
def row_spectrum_kernel(w_ptr, kf_ptr, fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N, w_plane,
                        P: tl.constexpr, Q: tl.constexpr, N1: tl.constexpr, SHIFT: tl.constexpr,
                        PREC: tl.constexpr):
    """kf[:, d, f1] = DFT_M(W_N^{n2·f1} · w[0, d, f1, :]) — the filter spectrum (grid: Dc, N1)."""
    d = tl.program_id(0).to(tl.int64)
    f1 = tl.program_id(1)
    n2, wr, wi, fpr, fpi, fqr, fqi, twr, twi = _row_setup(fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N,
                                                          f1, P, Q, SHIFT)
    row = (d * N1 + f1) * (P * Q)
    xr, xi = cmul(tl.load(w_ptr + row + n2), tl.load(w_ptr + w_plane + row + n2), wr, wi)
    yr, yi = fft_tile(xr, xi, fpr, fpi, fqr, fqi, twr, twi, PREC)
    kf_plane = tl.num_programs(0) * N1 * (P * Q)
    tl.store(kf_ptr + row + n2, yr)
    tl.store(kf_ptr + kf_plane + row + n2, yi)


@triton.jit
def row_conv_kernel(w_ptr, kf_ptr, fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N, npairs, w_plane,
                    P: tl.constexpr, Q: tl.constexpr, N1: tl.constexpr, SHIFT: tl.constexpr,
                    PREC: tl.constexpr):
    """In place, for every pair: w[f1] <- conj-twiddle · iDFT_M(kf[f1] · DFT_M(twiddle · w[f1])) (grid: Dc, N1)."""
    d = tl.program_id(0).to(tl.int64)
    f1 = tl.program_id(1)
    ndc = tl.num_programs(0)
    n2, wr, wi, fpr, fpi, fqr, fqi, twr, twi = _row_setup(fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N,
                                                          f1, P, Q, SHIFT)
    krow = (d * N1 + f1) * (P * Q)
    kf_plane = ndc * N1 * (P * Q)
    kr = tl.load(kf_ptr + krow + n2)
    ki = tl.load(kf_ptr + kf_plane + krow + n2)
    for pair in range(npairs):
        row = ((pair * ndc + d) * N1 + f1) * (P * Q)
        xr, xi = cmul(tl.load(w_ptr + row + n2), tl.load(w_ptr + w_plane + row + n2), wr, wi)
        yr, yi = fft_tile(xr, xi, fpr, fpi, fqr, fqi, twr, twi, PREC)
        yr, yi = cmul(yr, yi, kr, ki)
        xr, xi = ifft_tile(yr, yi, fpr, fpi, fqr, fqi, twr, twi, PREC)
        xr, xi = cmul_conj(xr, xi, wr, wi)
        tl.store(w_ptr + row + n2, xr)
        tl.store(w_ptr + w_plane + row + n2, xi)


@triton.jit
def row_bwd_kernel(wu_ptr, wg_ptr, wk_ptr, kf_ptr, fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N, npairs,
                   w_plane, P: tl.constexpr, Q: tl.constexpr, N1: tl.constexpr, SHIFT: tl.constexpr,
                   PREC: tl.constexpr):
    """Backward row pass (grid: Dc, N1). For every pair, wg[f1] <- the du row (G · conj(kf), back to the
    column domain, in place); wk[d, f1] <- the dk row from Σ_pairs G · conj(U) accumulated on chip."""
    d = tl.program_id(0).to(tl.int64)
    f1 = tl.program_id(1)
    ndc = tl.num_programs(0)
    n2, wr, wi, fpr, fpi, fqr, fqi, twr, twi = _row_setup(fp_ptr, fq_ptr, tw_ptr, lo_ptr, hi_ptr, NLO, NHI, N,
                                                          f1, P, Q, SHIFT)
    krow = (d * N1 + f1) * (P * Q)
    kf_plane = ndc * N1 * (P * Q)
    kr = tl.load(kf_ptr + krow + n2)
    ki = tl.load(kf_ptr + kf_plane + krow + n2)
    ar = tl.zeros((P, Q), kr.dtype)
    ai = tl.zeros((P, Q), kr.dtype)
    for pair in range(npairs):
        row = ((pair * ndc + d) * N1 + f1) * (P * Q)
        xr, xi = cmul(tl.load(wu_ptr + row + n2), tl.load(wu_ptr + w_plane + row + n2), wr, wi)
        ur, ui = fft_tile(xr, xi, fpr, fpi, fqr, fqi, twr, twi, PREC)
        xr, xi = cmul(tl.load(wg_ptr + row + n2), tl.load(wg_ptr + w_plane + row + n2), wr, wi)
        gr, gi = fft_tile(xr, xi, fpr, fpi, fqr, fqi, twr, twi, PREC)
        cr, ci = cmul_conj(gr, gi, ur, ui)
        ar += cr
        ai += ci
        yr, yi = cmul_conj(gr, gi, kr, ki)
        xr, xi = ifft_tile(yr, yi, fpr, fpi, fqr, fqi, twr, twi, PREC)
        xr, xi = cmul_conj(xr, xi, wr, wi)
        tl.store(wg_ptr + row + n2, xr)
        tl.store(wg_ptr + w_plane + row + n2, xi)
    xr, xi = ifft_tile(ar, ai, fpr, fpi, fqr, fqi, twr, twi, PREC)
    xr, xi = cmul_conj(xr, xi, wr, wi)
    tl.store(wk_ptr + krow + n2, xr)
    tl.store(wk_ptr + kf_plane + krow + n2, xi)

"""Selective-scan forward kernel (see :mod:`kernels.scan.triton_common` for the tile legend).

Grid: (batch, D / BD). Each program walks its rows' time axis in chunks of T steps: loads u, Δ (with
bias and softplus fused), z and the chunk's B / C, forms decay exp(Δ·A) and drive Δ·B·u in registers,
solves the recurrence inside the chunk with ``tl.associative_scan``, folds in the carried state, reduces
y = Σ_n C·h, adds D·u, gates with silu(z) and stores ``out``. Nothing of size B·D·N·L is ever stored:
the state (BD x NP) is carried in registers; every K chunks it is written to ``ckpt`` (B, D, segments,
NP) so the backward can restart there. Bytes per (b, d, t): read u, Δ, z and write out (4 x element
size) plus B and C, which all channel blocks of a batch row re-read from L2.
"""

import triton
import triton.language as tl

from kernels.scan.triton_common import chunk_states, column, load_bc, load_delta, load_rows


@triton.jit
def scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, h0_ptr, out_ptr, last_ptr, ck_ptr,
    L, N, nseg, sx_b, sx_d, sA_d, sA_n, sB_b, sB_g, sB_n, sB_d, sC_b, sC_g, sC_n, sC_d, bpg, cpg,
    sh_b, sh_d, sh_n,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, K: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """u, Δ, z, out: (B, D, L) with strides (sx_b, sx_d, 1); A (D, N); B, C: variable (b, g, n, L) or
    shared (d, n) strides; bpg / cpg: channels per group of B / C; h0: (B, D, N); last: (B, D, NP)."""
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BD
    acc = ck_ptr.dtype.element_ty
    dd = d0 + tl.arange(0, BD)
    nn = tl.arange(0, NP)
    tt = tl.arange(0, T)
    st = dd[:, None] * NP + nn[None, :]  # offsets of a [BD, NP] state in a (.., D, NP) buffer
    A = tl.load(A_ptr + dd[:, None] * sA_d + nn[None, :] * sA_n, mask=nn[None, :] < N, other=0.0).to(acc)
    bias = tl.load(db_ptr + dd).to(acc)
    gB = d0 // bpg
    gC = d0 // cpg
    rows = b * sx_b + dd[:, None] * sx_d
    if HAS_H0:
        h = tl.load(h0_ptr + b * sh_b + dd[:, None] * sh_d + nn[None, :] * sh_n, mask=nn[None, :] < N,
                    other=0.0).to(acc)
    else:
        h = tl.zeros((BD, NP), acc)
    ck_b = ck_ptr + b * tl.num_programs(1) * BD * nseg * NP
    tl.store(ck_b + (dd[:, None] * nseg) * NP + nn[None, :], h)
    nchunks = tl.cdiv(L, T)
    for c in range(nchunks):
        t = c * T + tt
        dt, _ = load_delta(dt_ptr + rows, bias, t, L, SOFTPLUS)
        u = load_rows(u_ptr + rows, t, L, acc)
        B3 = load_bc(B_ptr, b, gB, sB_b, sB_g, sB_n, sB_d, dd, nn, t, N, L, acc, B_VAR)
        C3 = load_bc(C_ptr, b, gC, sC_b, sC_g, sC_n, sC_d, dd, nn, t, N, L, acc, C_VAR)
        _, _, hs = chunk_states(dt, u, A, B3, h)
        y = tl.sum(hs * C3, axis=1)
        h = column(hs, tt, T - 1)
        if HAS_D:
            y += tl.load(D_ptr + dd).to(acc)[:, None] * u
        if HAS_Z:
            zz = load_rows(z_ptr + rows, t, L, acc)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + rows + t[None, :], y.to(out_ptr.dtype.element_ty), mask=t[None, :] < L)
        if ((c + 1) % K == 0) & (c + 1 < nchunks):
            tl.store(ck_b + (dd[:, None] * nseg + (c + 1) // K) * NP + nn[None, :], h)
    tl.store(last_ptr + b * tl.num_programs(1) * BD * NP + st, h)

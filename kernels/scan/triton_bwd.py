"""Selective-scan backward kernel: recomputation per chunk and a reverse scan of the adjoint state.

Grid: (batch, D / BD), one program per forward program. The time axis is walked backwards segment by
segment (K chunks of T steps, the forward's checkpoints): the segment is recomputed forward from its
checkpoint, writing the K chunk-start states to a small per-program ``scratch`` (K x BD x NP, stays in
L2); then its chunks are visited in reverse. For one chunk, with states h_t recomputed from its start:

    dy_t  = dout_t · silu(z_t)                       dz_t = dout_t · (y_t + D u_t) · silu'(z_t)
    dh_t  = C_t dy_t + exp(Δ_{t+1} A) dh_{t+1}       (tl.associative_scan, reverse=True; carried across chunks)
    a_t h_{t-1} = h_t - Δ_t B_t u_t                  (no shifted state needed)
    du_t  = Δ_t Σ_n dh_t B_t + D dy_t               dΔ_t = u_t Σ_n dh_t B_t + Σ_n dh_t A a_t h_{t-1}
    dA   += Σ_t dh_t Δ_t a_t h_{t-1}                 dB_t = Σ_d dh_t Δ_t u_t,   dC_t = Σ_d dy_t h_t

dΔ is multiplied by softplus' = sigmoid(pre) (1 past the threshold); the delta-bias gradient is its sum.
Variable B / C gradients (sums over channels) are atomically added to fp32 (B, G, N, L) buffers; the
other parameter gradients are per-(batch, channel) partials that the launcher sums over the batch.
"""

import triton
import triton.language as tl

from kernels.scan.triton_common import (
    SOFTPLUS_THRESHOLD,
    affine_combine,
    chunk_states,
    column,
    load_bc,
    load_delta,
    load_rows,
)


@triton.jit
def scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, db_ptr, ck_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, ddb_ptr, dh0_ptr, scr_ptr,
    L, N, nseg, sx_b, sx_d, sA_d, sA_n, sB_b, sB_g, sB_n, sB_d, sC_b, sC_g, sC_n, sC_d, bpg, cpg,
    gB_b, gB_g, gC_b, gC_g,
    BD: tl.constexpr, NP: tl.constexpr, T: tl.constexpr, K: tl.constexpr,
    B_VAR: tl.constexpr, C_VAR: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_DLAST: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Inputs as in the forward kernel; dout, du, dΔ, dz share u's strides (sx_b, sx_d, 1). dA, dh0, dlast
    and shared dB / dC: (B, D, NP); dD, dbias: (B, D); variable dB / dC: fp32 (B, G, N, L) with strides
    (g*_b, g*_g, L, 1); scratch: (B, D / BD, K, BD, NP)."""
    b = tl.program_id(0).to(tl.int64)
    d0 = tl.program_id(1) * BD
    acc = ck_ptr.dtype.element_ty
    dd = d0 + tl.arange(0, BD)
    nn = tl.arange(0, NP)
    tt = tl.arange(0, T)
    st = b * tl.num_programs(1) * BD * NP + dd[:, None] * NP + nn[None, :]  # (B, D, NP) offsets
    A = tl.load(A_ptr + dd[:, None] * sA_d + nn[None, :] * sA_n, mask=nn[None, :] < N, other=0.0).to(acc)
    bias = tl.load(db_ptr + dd).to(acc)
    Dv = tl.zeros((BD,), acc)
    if HAS_D:
        Dv = tl.load(D_ptr + dd).to(acc)
    gB = d0 // bpg
    gC = d0 // cpg
    rows = b * sx_b + dd[:, None] * sx_d
    ck_b = ck_ptr + b * tl.num_programs(1) * BD * nseg * NP
    scr = scr_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * K * BD * NP
    scr_off = tl.arange(0, BD)[:, None] * NP + nn[None, :]
    carry = tl.zeros((BD, NP), acc)  # dL/dh at the first step of the chunk after the current one
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + st).to(acc)
    dA_acc = tl.zeros((BD, NP), acc)
    dBs_acc = tl.zeros((BD, NP), acc)
    dCs_acc = tl.zeros((BD, NP), acc)
    dD_acc = tl.zeros((BD,), acc)
    ddb_acc = tl.zeros((BD,), acc)
    dh0 = tl.zeros((BD, NP), acc)
    nchunks = tl.cdiv(L, T)
    for si in range(nseg):
        seg = nseg - 1 - si
        c_lo = seg * K
        c_hi = tl.minimum(c_lo + K, nchunks)
        # recompute the segment forward, keeping each chunk's start state
        h = tl.load(ck_b + (dd[:, None] * nseg + seg) * NP + nn[None, :])
        for c in range(c_lo, c_hi):
            tl.store(scr + (c - c_lo) * BD * NP + scr_off, h)
            t = c * T + tt
            dt, _ = load_delta(dt_ptr + rows, bias, t, L, SOFTPLUS)
            u = load_rows(u_ptr + rows, t, L, acc)
            B3 = load_bc(B_ptr, b, gB, sB_b, sB_g, sB_n, sB_d, dd, nn, t, N, L, acc, B_VAR)
            _, _, hs = chunk_states(dt, u, A, B3, h)
            h = column(hs, tt, T - 1)
        tl.debug_barrier()  # the scratch states written above are read back below by other threads
        for ci in range(c_hi - c_lo):
            c = c_hi - 1 - ci
            t = c * T + tt
            tm = t[None, :] < L
            h = tl.load(scr + (c - c_lo) * BD * NP + scr_off)
            dt, pre = load_delta(dt_ptr + rows, bias, t, L, SOFTPLUS)
            dt_next, _ = load_delta(dt_ptr + rows, bias, t + 1, L, SOFTPLUS)
            u = load_rows(u_ptr + rows, t, L, acc)
            B3 = load_bc(B_ptr, b, gB, sB_b, sB_g, sB_n, sB_d, dd, nn, t, N, L, acc, B_VAR)
            C3 = load_bc(C_ptr, b, gC, sC_b, sC_g, sC_n, sC_d, dd, nn, t, N, L, acc, C_VAR)
            decay, drive, hs = chunk_states(dt, u, A, B3, h)
            dy = load_rows(dout_ptr + rows, t, L, acc)
            if HAS_Z:
                zz = load_rows(z_ptr + rows, t, L, acc)
                sz = tl.sigmoid(zz)
                y = tl.sum(hs * C3, axis=1) + Dv[:, None] * u
                tl.store(dz_ptr + rows + t[None, :], (dy * y * sz * (1 + zz * (1 - sz))).to(dz_ptr.dtype.element_ty),
                         mask=tm)
                dy = dy * zz * sz
            dD_acc += tl.sum(dy * u, axis=1)
            # adjoint state dh_t = C_t dy_t + exp(Δ_{t+1} A) dh_{t+1}, plus the carry. A reverse scan is a
            # scan of the flipped axis: the combine's first argument composes the later steps, so the
            # forward combine applies unchanged.
            nxt = tl.exp(dt_next[:, None, :] * A[:, :, None])
            cum, dh = tl.associative_scan((nxt, C3 * dy[:, None, :]), 2, affine_combine, reverse=True)
            dh = dh + cum * carry[:, :, None]
            carry = column(dh, tt, 0)
            dh0 = carry * column(decay, tt, 0)
            hprev_a = hs - drive  # a_t h_{t-1}
            sB = tl.sum(dh * B3, axis=1)
            gl = dh * hprev_a  # dL/d(Δ_t A) per state
            ddt = u * sB + tl.sum(gl * A[:, :, None], axis=1)
            dA_acc += tl.sum(gl * dt[:, None, :], axis=2)
            du = dt * sB + Dv[:, None] * dy
            tl.store(du_ptr + rows + t[None, :], du.to(du_ptr.dtype.element_ty), mask=tm)
            if SOFTPLUS:
                ddt = ddt * tl.where(pre > SOFTPLUS_THRESHOLD, 1.0, tl.sigmoid(pre))
            ddt = tl.where(tm, ddt, 0.0)
            ddb_acc += tl.sum(ddt, axis=1)
            tl.store(ddt_ptr + rows + t[None, :], ddt.to(ddt_ptr.dtype.element_ty), mask=tm)
            gB3 = dh * (dt * u)[:, None, :]
            gC3 = hs * dy[:, None, :]
            bc_mask = (nn[:, None] < N) & (t[None, :] < L)
            if B_VAR:
                tl.atomic_add(dB_ptr + b * gB_b + gB * gB_g + nn[:, None] * L + t[None, :], tl.sum(gB3, axis=0),
                              mask=bc_mask)
            else:
                dBs_acc += tl.sum(gB3, axis=2)
            if C_VAR:
                tl.atomic_add(dC_ptr + b * gC_b + gC * gC_g + nn[:, None] * L + t[None, :], tl.sum(gC3, axis=0),
                              mask=bc_mask)
            else:
                dCs_acc += tl.sum(gC3, axis=2)
        tl.debug_barrier()  # the next segment overwrites the scratch
    tl.store(dA_ptr + st, dA_acc)
    tl.store(dh0_ptr + st, dh0)
    if not B_VAR:
        tl.store(dB_ptr + st, dBs_acc)
    if not C_VAR:
        tl.store(dC_ptr + st, dCs_acc)
    tl.store(dD_ptr + b * tl.num_programs(1) * BD + dd, dD_acc)
    tl.store(ddb_ptr + b * tl.num_programs(1) * BD + dd, ddb_acc)


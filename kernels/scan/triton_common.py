"""Triton helpers shared by the selective-scan forward and backward kernels.

Tile legend: one program owns batch row b and BD consecutive channels d; a chunk is T time steps.
[BD, T] tiles hold u, Δ, z, y; [BD, NP] tiles hold A and the state h (NP = N rounded up to a power of
two, padded with A = 0, B = C = 0 so padded states stay 0); [BD, NP, T] tiles hold the chunk's decays
exp(Δ·A), drives Δ·B·u and states. Positions past L get Δ = 0 and u = 0: decay 1, drive 0, so the state
passes through them unchanged and the chunk's last column is the state at L - 1.
"""

import triton
import triton.language as tl

SOFTPLUS_THRESHOLD = tl.constexpr(20.0)  # F.softplus returns x past 20; jit globals must be constexpr instances


@triton.jit
def affine_combine(a1, b1, a2, b2):
    """Compose h -> a1·h + b1 then h -> a2·h + b2 (the first argument is the earlier step)."""
    return a1 * a2, a2 * b1 + b2


@triton.jit
def load_delta(row_ptr, bias, t, L, SOFTPLUS: tl.constexpr):
    """Δ for times t of the rows at ``row_ptr`` ([BD, 1] pointers): (Δ, pre-activation), Δ = 0 past L."""
    m = t[None, :] < L
    x = tl.load(row_ptr + t[None, :], mask=m, other=0.0).to(bias.dtype) + bias[:, None]
    if SOFTPLUS:
        dt = tl.where(x > SOFTPLUS_THRESHOLD, x, tl.log(1.0 + tl.exp(tl.minimum(x, SOFTPLUS_THRESHOLD))))
    else:
        dt = x
    return tl.where(m, dt, 0.0), x


@triton.jit
def load_rows(row_ptr, t, L, dtype):
    """A [BD, T] tile of (B, D, L) rows in compute dtype, 0 past L."""
    return tl.load(row_ptr + t[None, :], mask=t[None, :] < L, other=0.0).to(dtype)


@triton.jit
def load_bc(ptr, b, g, s_b, s_g, s_n, s_d, dd, nn, t, N, L, dtype, VAR: tl.constexpr):
    """B or C of one chunk, broadcastable against [BD, NP, T]: variable (b, g, n, t) -> [1, NP, T],
    shared (d, n) -> [BD, NP, 1]."""
    nm = nn < N
    if VAR:
        off = b * s_b + g * s_g + nn[:, None] * s_n + t[None, :]
        x3 = tl.load(ptr + off, mask=nm[:, None] & (t[None, :] < L), other=0.0).to(dtype)[None, :, :]
    else:
        x3 = tl.load(ptr + dd[:, None] * s_d + nn[None, :] * s_n, mask=nm[None, :], other=0.0).to(dtype)[:, :, None]
    return x3


@triton.jit
def chunk_states(dt, u, A, B3, h):
    """States of one chunk from the state h before it: (decay, drive, states), all [BD, NP, T]."""
    decay = tl.exp(dt[:, None, :] * A[:, :, None])
    drive = (dt * u)[:, None, :] * B3
    cum, hs = tl.associative_scan((decay, drive), 2, affine_combine)
    return decay, drive, hs + cum * h[:, :, None]


@triton.jit
def column(x, tt, j):
    """x[:, :, j] of a [BD, NP, T] tile (a masked reduction: tiles cannot be indexed)."""
    return tl.sum(tl.where(tt[None, None, :] == j, x, 0.0), axis=2)

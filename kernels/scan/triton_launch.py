"""Host launchers of the Triton selective scan (forward, backward) on validated tensors.

B and C arrive in one of mamba_ssm's layouts: shared (D, N), per batch (B, N, L) or grouped (B, G, N, L).
The kernels see them through four strides (batch, group, state, channel) and a channel-per-group count,
so no layout is ever expanded to D channels. A program owns BD channels, BD a power of two dividing the
channels per group, so all its channels read the same B / C rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kernels.scan.triton_bwd import scan_bwd_kernel
from kernels.scan.triton_fwd import scan_fwd_kernel

CHUNK = 32  # T: time steps per chunk ([BD, NP, T] register tiles)
SEGMENT = 64  # K: chunks between state checkpoints (2048 steps; checkpoints are B·D·N·L/2048 values)
BLOCK_D = 4  # channels per program (upper bound)


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass(frozen=True)
class BCView:
    """How the kernels address B or C: variable over time or shared, strides, channels per group."""

    var: bool
    s_b: int
    s_g: int
    s_n: int
    s_d: int
    groups: int
    per_group: int

    @staticmethod
    def of(X: torch.Tensor, dim: int) -> "BCView":
        if X.dim() == 2:  # (D, N)
            return BCView(False, 0, 0, X.stride(1), X.stride(0), 1, dim)
        if X.dim() == 3:  # (B, N, L)
            return BCView(True, X.stride(0), 0, X.stride(1), 0, 1, dim)
        return BCView(True, X.stride(0), X.stride(1), X.stride(2), 0, X.shape[1], dim // X.shape[1])


@dataclass(frozen=True)
class ScanGeometry:
    batch: int
    dim: int
    length: int
    nstate: int
    NP: int
    T: int
    K: int
    BD: int
    nseg: int


def geometry(u, A, bv: BCView, cv: BCView, chunk: int, segment: int) -> ScanGeometry:
    """Tile sizes of one call. BD: the largest power of two <= BLOCK_D dividing the channels per group,
    halved while there would be fewer than two programs per SM (each program walks all of L)."""
    Bn, D, L = u.shape
    N = A.shape[1]
    T = min(chunk, next_pow2(L))
    nseg = math.ceil(math.ceil(L / T) / segment)
    g = math.gcd(bv.per_group, cv.per_group)
    BD = 1 << min((g & -g).bit_length() - 1, BLOCK_D.bit_length() - 1)
    sms = torch.cuda.get_device_properties(u.device).multi_processor_count if u.device.type == "cuda" else 0
    while BD > 1 and Bn * D // BD < 2 * sms:
        BD //= 2
    return ScanGeometry(Bn, D, L, N, next_pow2(N), T, segment, BD, nseg)


def scan_meta(g: ScanGeometry, bv: BCView, cv: BCView, has_D: bool, has_z: bool, softplus: bool) -> dict:
    """Constexprs and warps shared by the forward and backward kernels. Warps: about 8 elements of a
    [BD, NP, T] tile per thread, 2 to 8 (spill-free on sm_90 at T = 32, see the compile test)."""
    return dict(BD=g.BD, NP=g.NP, T=g.T, K=g.K, B_VAR=bv.var, C_VAR=cv.var, HAS_D=has_D, HAS_Z=has_z,
                SOFTPLUS=softplus, num_warps=max(2, min(8, g.BD * g.NP * g.T // 256)))


def compute_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _common_args(g: ScanGeometry, u, A, bv: BCView, cv: BCView):
    return (g.length, g.nstate, g.nseg, u.stride(0), u.stride(1), A.stride(0), A.stride(1),
            bv.s_b, bv.s_g, bv.s_n, bv.s_d, cv.s_b, cv.s_g, cv.s_n, cv.s_d, bv.per_group, cv.per_group)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, h0, softplus: bool, chunk: int = CHUNK, segment: int = SEGMENT):
    """(out, last_state, checkpoints). u, delta, z contiguous (B, D, L); variable B / C with unit L stride."""
    bv, cv = BCView.of(B, u.shape[1]), BCView.of(C, u.shape[1])
    g = geometry(u, A, bv, cv, chunk, segment)
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    out = torch.empty_like(u)
    last = torch.empty(g.batch, g.dim, g.NP, device=u.device, dtype=acc)
    ck = torch.empty(g.batch, g.dim, g.nseg, g.NP, device=u.device, dtype=acc)
    bias = delta_bias if delta_bias is not None else u.new_zeros(g.dim, dtype=acc)
    h0s = h0.stride() if h0 is not None else (0, 0, 0)
    scan_fwd_kernel[(g.batch, g.dim // g.BD)](
        u, delta, A, B, C, D if D is not None else bias, z if z is not None else u, bias,
        h0 if h0 is not None else last, out, last, ck, *_common_args(g, u, A, bv, cv), *h0s,
        HAS_H0=h0 is not None, **scan_meta(g, bv, cv, D is not None, z is not None, softplus))
    return out, last[..., : g.nstate].contiguous(), ck


def scan_bwd(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ck, softplus: bool,
             chunk: int = CHUNK, segment: int = SEGMENT):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0), each in its input's dtype (dh0 in the
    compute dtype); None where the input is None. ``dlast`` may be None."""
    bv, cv = BCView.of(B, u.shape[1]), BCView.of(C, u.shape[1])
    g = geometry(u, A, bv, cv, chunk, segment)
    acc = ck.dtype
    dev = u.device
    du, ddelta = torch.empty_like(u), torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    part = torch.empty(g.batch, g.dim, g.NP, device=dev, dtype=acc)
    dA, dh0 = torch.empty_like(part), torch.empty_like(part)
    dB = _bc_grad_buffer(B, bv, g, acc)
    dC = _bc_grad_buffer(C, cv, g, acc)
    dD, ddb = (torch.empty(g.batch, g.dim, device=dev, dtype=acc) for _ in range(2))
    scratch = torch.empty(g.batch, g.dim // g.BD, g.K, g.BD, g.NP, device=dev, dtype=acc)
    bias = delta_bias if delta_bias is not None else u.new_zeros(g.dim, dtype=acc)
    if dlast is not None:
        dlast = torch.nn.functional.pad(dlast.to(acc), (0, g.NP - g.nstate)).contiguous()
    scan_bwd_kernel[(g.batch, g.dim // g.BD)](
        u, delta, A, B, C, D if D is not None else bias, z if z is not None else u, bias, ck, dout,
        dlast if dlast is not None else ck, du, ddelta, dz if dz is not None else du, dA, dB, dC, dD, ddb, dh0,
        scratch, *_common_args(g, u, A, bv, cv), *_bc_grad_strides(dB, bv), *_bc_grad_strides(dC, cv),
        HAS_DLAST=dlast is not None, **scan_meta(g, bv, cv, D is not None, z is not None, softplus))
    N = g.nstate

    def cast(t, like):
        return None if like is None else t.to(like.dtype)

    dB = dB.reshape(B.shape) if bv.var else dB.sum(0)[:, :N]
    dC = dC.reshape(C.shape) if cv.var else dC.sum(0)[:, :N]
    return (du, ddelta, cast(dA.sum(0)[:, :N], A), cast(dB, B), cast(dC, C), cast(dD.sum(0), D), dz,
            cast(ddb.sum(0), delta_bias), dh0[..., :N].contiguous())


def _bc_grad_buffer(X, view: BCView, g: ScanGeometry, acc):
    """Variable layouts: a zeroed (B, G, N, L) buffer the kernel adds into; shared: (B, D, NP) partials."""
    if view.var:
        return torch.zeros(g.batch, view.groups, g.nstate, g.length, device=X.device, dtype=acc)
    return torch.empty(g.batch, g.dim, g.NP, device=X.device, dtype=acc)


def _bc_grad_strides(buf, view: BCView):
    return (buf.stride(0), buf.stride(1)) if view.var else (0, 0)

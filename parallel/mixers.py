"""Sequence-parallel versions of the three mixers' sequence-mixing steps, installed on a module from outside.

Every rank of a sequence-parallel group holds the contiguous slice ``[r*Ls, (r+1)*Ls)`` of the same windows
(``L = P * Ls``); everything position-wise (projections, norms, MLPs, gates) runs on the slice unchanged. Only
the steps that mix along the sequence are replaced, per module instance (the model classes stay untouched):

- Hyena (``HyenaOperator.short_conv`` / ``long_conv``): a halo of k-1 positions before the causal short conv;
  around the FFT long conv an all-to-all from sequence to channel shards and back (one each way, carrying the
  gated product ``x1 * v``), with the implicit filter evaluated only for this rank's d/P channels, its MLP in
  chunks of positions and recomputed in the backward (no rank keeps the MLP's activations over the window).
- Mamba (``Mamba.conv`` / ``scan``): a halo of d_conv-1 positions before the causal conv; the scan is linear in
  its initial state, so each rank scans its slice once, from zero, with D and without the gate (outputs y0,
  final state S_r), computes the slice's decay product P_r = exp(A * sum_t softplus(delta_t + dt_bias)),
  all-gathers (P_r, S_r) — 2*B*Di*N numbers per rank, whatever L is — forms the state carried in from the ranks
  before it, H_r = P_{r-1} H_{r-1} + S_{r-1} (H_0 = initial_state or 0), and folds it into its outputs in closed
  form: out_t = (y0_t + sum_n C_t[n] exp(A sum_{s<=t} Δ_s) H_r[n]) * silu(z_t), in chunks along the slice with
  hand-written backwards that add the fold's gradients of Δ and C into the scan's own buffers (a rank holds
  the gradient tensors of one scan, as one process does). Gradients reach the earlier ranks through the
  all-gather's reduce-scatter. Every rank runs the same operations (also rank 0, whose carried state is 0),
  so the collectives of the backward line up on all ranks.
- Transformer (``CausalSelfAttention.forward``): DeepSpeed Ulysses (``DistributedAttention``): rotary angles of
  the GLOBAL positions ``r*Ls + t`` on the slice, then all-to-alls from sequence to head shards for q, k, v,
  causal attention over the whole window for H/P heads, and back.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from parallel.collectives import (BACKWARD, FORWARD, all_gather_stack, channel_to_seq, halo_exchange, record,
                                  seq_to_channel)


@dataclass
class SPState:
    """What a wrapped module needs: its group, degree, rank in the group, and a tag for the byte counter."""

    group: Any
    size: int
    rank: int
    tag: str


def _install(module: nn.Module, name: str, fn) -> None:
    """Replace ``module.name`` by ``fn`` bound to the module, keeping the previous bound method as
    ``module._sp_orig_<name>`` (the wrapper calls it for the local computation)."""
    setattr(module, f"_sp_orig_{name}", getattr(module, name))
    setattr(module, name, types.MethodType(fn, module))


def _local_conv(self, orig, conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """The causal conv ``orig`` (``conv``'s taps) on this rank's slice: halo, convolve, drop the halo's outputs.
    (The conv keeps the halo-extended copy of ``x`` for its backward. Keeping ``x`` and the halo instead and
    concatenating again in the backward measured worse for both mixers: the recomputed concatenation and conv
    output land on the backward's peak.)"""
    sp: SPState = self._sp
    width = conv.kernel_size[0] - 1
    return orig(halo_exchange(x, width, sp.group, sp.tag))[:, width:]


# ---------------------------------------------------------------------------------------------------------
# Hyena


FILTER_CHUNK = 1 << 14  # positions of the implicit filter's MLP evaluated at once (9 x 64 floats each)


def hyena_channel_filter(filter_fn: nn.Module, L: int, lo: int, hi: int) -> torch.Tensor:
    """The implicit long filter of ``HyenaFilter`` for channels ``[lo, hi)`` only, (hi-lo, L): the MLP's last
    Linear (order -> d, no bias) and the decay window are evaluated on those rows, so no rank holds the (d, L)
    filter. The MLP runs over ``FILTER_CHUNK`` positions at a time and keeps nothing for the backward, which
    recomputes it chunk by chunk: a rank holds the (hi-lo, L) filter, not the MLP's activations over the
    whole window (9 x filter_order numbers per position, the same on every rank). Falls back to the whole
    filter, sliced, if the filter is not built as ``models.hyena`` builds it."""
    mlp = getattr(filter_fn, "implicit_filter", None)
    mod = getattr(filter_fn, "modulation", None)
    if not (isinstance(mlp, nn.Sequential) and isinstance(mlp[-1], nn.Linear) and hasattr(mod, "deltas")):
        return filter_fn.filter(L)[lo:hi]
    params = [p for p in mlp.parameters() if p.requires_grad]
    return _ChunkedChannelFilter.apply(filter_fn, L, lo, hi, *params)


def _channel_filter(filter_fn: nn.Module, lo: int, hi: int, t0: int, t1: int) -> torch.Tensor:
    """Rows ``[lo, hi)`` of the filter at positions ``[t0, t1)``: (hi-lo, t1-t0)."""
    dtype = filter_fn.bias.dtype
    z, t = filter_fn.pos_emb(t1)
    z, t = z[0, t0:], t[0, t0:]  # (t1-t0, emb_dim), (t1-t0, 1): the l_max grid's positions t0 .. t1-1
    mlp, mod = filter_fn.implicit_filter, filter_fn.modulation
    last = mlp[-1]
    h = z.to(dtype)
    for layer in list(mlp)[:-1]:  # the modules themselves (ZeRO-3 fetches their parameters in their hooks)
        h = layer(h)
    h = F.linear(h, last.weight[lo:hi], None if last.bias is None else last.bias[lo:hi])
    if mod.modulate:
        h = h * (torch.exp(-t.to(dtype) * mod.deltas[0, :, lo:hi].abs()) + mod.shift)
    return h.t()


class _ChunkedChannelFilter(torch.autograd.Function):
    """:func:`_channel_filter` over ``[0, L)`` in chunks; saves nothing, recomputes each chunk in the backward."""

    @staticmethod
    def forward(ctx, filter_fn, L, lo, hi, *params):
        ctx.filter_fn, ctx.L, ctx.lo, ctx.hi = filter_fn, L, lo, hi
        k = torch.empty(hi - lo, L, dtype=filter_fn.bias.dtype, device=filter_fn.bias.device)
        with torch.no_grad():
            for t0 in range(0, L, FILTER_CHUNK):
                t1 = min(L, t0 + FILTER_CHUNK)
                k[:, t0:t1] = _channel_filter(filter_fn, lo, hi, t0, t1)
        return k

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dk):
        params = [p for p in ctx.filter_fn.implicit_filter.parameters() if p.requires_grad]
        grads = [None] * len(params)
        for t0 in range(0, ctx.L, FILTER_CHUNK):
            t1 = min(ctx.L, t0 + FILTER_CHUNK)
            with torch.enable_grad():
                k = _channel_filter(ctx.filter_fn, ctx.lo, ctx.hi, t0, t1)
            part = torch.autograd.grad(k, params, dk[:, t0:t1], allow_unused=True)
            grads = [g if acc is None else acc if g is None else acc.add_(g) for acc, g in zip(grads, part)]
        return (None, None, None, None, *grads)


def _hyena_short_conv(self, u: torch.Tensor) -> torch.Tensor:
    return _local_conv(self, self._sp_orig_short_conv, self.short_filter, u)


def _hyena_long_conv(self, v: torch.Tensor) -> torch.Tensor:
    sp: SPState = self._sp
    vc = seq_to_channel(v, sp.group, sp.tag)  # (B, L, d/P): the whole window for this rank's channels
    width = self.d_model // sp.size
    lo, hi = sp.rank * width, (sp.rank + 1) * width
    k = hyena_channel_filter(self.filter_fn, vc.shape[1], lo, hi)
    yc = kernels.fftconv(vc.transpose(1, 2), k, self.filter_fn.bias[lo:hi]).transpose(1, 2)
    return channel_to_seq(yc, sp.group, sp.tag)


def wrap_hyena(module: nn.Module, sp: SPState) -> None:
    if module.d_model % sp.size:
        raise ValueError(f"Hyena sequence parallelism shards the long convolution by channels: d_model="
                         f"{module.d_model} is not divisible by parallel.sequence={sp.size}")
    module._sp = sp
    _install(module, "short_conv", _hyena_short_conv)
    _install(module, "long_conv", _hyena_long_conv)


# ---------------------------------------------------------------------------------------------------------
# Mamba


def _mamba_conv(self, xin: torch.Tensor) -> torch.Tensor:
    return _local_conv(self, self._sp_orig_conv, self.conv1d, xin)


FOLD_CHUNK_ELEMENTS = 1 << 20  # (b, t, Di, N) elements of exp(A cs_t) the fold evaluates at once


class _FoldLink:
    """Shared by one call's :class:`_SliceDecay` and :class:`_FoldGate`: the fold's chunks along the slice, the
    slice's cumulative Δ at every chunk start and the number of chunks where the carried state is not yet
    exactly 0 (set in the forward), and the fold's output gradient (set by ``_FoldGate``'s backward, used and
    dropped by ``_SliceDecay``'s)."""

    chunks: list
    starts: list
    live: int
    H: torch.Tensor | None = None
    gf: torch.Tensor | None = None


def _fold_chunks(batch: int, L: int, Di: int, N: int) -> list[tuple[int, int]]:
    step = max(1, FOLD_CHUNK_ELEMENTS // (batch * Di * N))
    return [(t0, min(L, t0 + step)) for t0 in range(0, L, step)]


def _fold_terms(delta, C, A, bias, start, t0, t1, wide):
    """One chunk of the fold: softplus' input x (b, t, Di), cs_t = sum_{s<=t} Δ_s over the slice (b, t, Di),
    E_t = exp(A cs_t) (b, t, Di, N) and C (b, t, N), all in ``wide``."""
    x = delta[:, t0:t1].to(wide) + bias.to(wide)
    cs = F.softplus(x).cumsum(dim=1).add_(start[:, None])
    return x, cs, torch.exp(cs[..., None] * A), C[:, t0:t1].to(wide)


class _SliceDecay(torch.autograd.Function):
    """(delta, C, A_log, bias) -> (decay, delta, C): the slice's decay product exp(A sum_t Δ_t), (B, Di, N),
    and delta and C unchanged, which the zero-state scan and :class:`_FoldGate` take from here.

    Its backward runs after theirs and receives the scan's gradients of delta and C; it adds into those
    buffers, in place, its own terms and the fold's terms for delta, C, A_log and the dt bias (the fold's gate
    gradient is left on the link by ``_FoldGate``), so the fold needs no (B, L, Di) gradient of its own
    next to the scan's. With cs_t = sum_{s<=t} Δ_s, E = exp(A cs), fold_t = sum_n C_t E_t H and gf its
    gradient: dcs_t = gf_t sum_n C_t A E_t H, dΔ_s = sum_{t>=s} dcs_t + sum_n g_decay A decay (a reverse
    cumulative sum, one chunk at a time), d delta = dΔ softplus'(delta + bias), dC_t = sum_d gf_t E_t H,
    dA = sum gf_t C_t E_t H cs_t + sum_b g_decay decay cs_L, d A_log = A dA."""

    @staticmethod
    def forward(ctx, delta, C, A_log, bias, link):
        wide = torch.promote_types(A_log.dtype, torch.float32)
        A = -torch.exp(A_log.to(wide))
        batch, L, Di = delta.shape
        chunks = _fold_chunks(batch, L, Di, A.shape[1])
        s = torch.zeros(batch, Di, dtype=wide, device=delta.device)
        starts = []
        for t0, t1 in chunks:
            starts.append(s.clone())
            s += F.softplus(delta[:, t0:t1].to(wide) + bias.to(wide)).sum(dim=1)
        # From the first chunk whose start already has A cs below the exponent where exp is exactly 0 (A < 0,
        # cs non-decreasing), every term of the fold is 0: those chunks are skipped (exactly).
        underflow = math.log(torch.finfo(wide).tiny * torch.finfo(wide).eps) - 1.0
        top = A.max(dim=-1).values  # the slowest decay of each channel
        link.live = next((i for i, st in enumerate(starts) if float((st * top).max()) < underflow), len(chunks))
        link.chunks, link.starts = chunks, starts
        decay = torch.exp(s[..., None] * A)
        ctx.link, ctx.wide = link, wide
        ctx.save_for_backward(delta, C, A_log, bias, s, decay)
        return decay, delta.view_as(delta), C.view_as(C)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_decay, g_delta, g_C):
        delta, C, A_log, bias, s, decay = ctx.saved_tensors
        link, wide = ctx.link, ctx.wide
        A = -torch.exp(A_log.to(wide))
        gd = g_decay.to(wide) * decay  # (B, Di, N)
        carry = (gd * A).sum(dim=-1)  # dL/dΔ_s from the decay product, the same for every s
        dA = (gd * s[..., None]).sum(dim=0)
        g_delta = torch.zeros_like(delta) if g_delta is None else g_delta
        g_C = torch.zeros_like(C) if g_C is None else g_C
        dbias = torch.zeros(delta.shape[2], dtype=wide, device=delta.device)
        gf, link.gf = link.gf, None
        H = link.H
        for i, (t0, t1) in reversed(list(enumerate(link.chunks))):
            if gf is not None and i < link.live:
                x, cs, E, Cc = _fold_terms(delta, C, A, bias, link.starts[i], t0, t1, wide)
                gfc = gf[:, t0:t1].to(wide)
                E.mul_(H[:, None])  # E H
                g_C[:, t0:t1] += torch.matmul(gfc[:, :, None], E).squeeze(2).to(g_C.dtype)  # sum_d gf E H
                E.mul_(Cc[:, :, None]).mul_(gfc[..., None])  # gf C E H
                dA += torch.einsum("btdn,btd->dn", E, cs)
                dcs = torch.einsum("btdn,dn->btd", E, A)
                del E, cs
                dD = dcs.flip(1).cumsum(dim=1).flip(1).add_(carry[:, None])  # dL/dΔ_s for s in the chunk
                carry = carry + dcs.sum(dim=1)
            else:
                x = delta[:, t0:t1].to(wide) + bias.to(wide)
                dD = carry[:, None].expand_as(x)
            dx = torch.ops.aten.softplus_backward(dD, x, 1.0, 20.0)
            dbias += dx.sum(dim=(0, 1))
            g_delta[:, t0:t1] += dx.to(g_delta.dtype)
        d_A_log = (dA * A).to(A_log.dtype) if ctx.needs_input_grad[2] else None
        d_bias = dbias.to(bias.dtype) if ctx.needs_input_grad[3] else None
        return g_delta, g_C, d_A_log, d_bias, None


class _FoldGate(torch.autograd.Function):
    """out = (y0 + fold) * silu(z), fold_t = sum_n C_t[n] exp(A cs_t) H[n] (per channel; cs_t = sum_{s<=t} Δ_s
    over the slice): the outputs of a scan from the carried-in state H, given the zero-state scan's y0 (D u
    included). Chunk by chunk along L (the link's chunks), never a (B, L, Di, N) tensor. Its backward returns the
    gradients of y0 (= the fold's, gf, written over the incoming gradient and also left on the link), z and H;
    :class:`_SliceDecay` adds the fold's gradients of delta, C, A_log and the dt bias."""

    @staticmethod
    def forward(ctx, y0, z, H, delta, C, A_log, bias, link):
        wide = torch.promote_types(A_log.dtype, torch.float32)
        A = -torch.exp(A_log.to(wide))
        out = torch.empty_like(y0)
        Hw = H.to(wide)
        link.H = Hw
        for i, (t0, t1) in enumerate(link.chunks):
            pre = y0[:, t0:t1].to(wide)
            if i < link.live:
                _, _, E, Cc = _fold_terms(delta, C, A, bias, link.starts[i], t0, t1, wide)
                pre = pre + torch.einsum("btdn,btn,bdn->btd", E, Cc, Hw)
            out[:, t0:t1] = pre * F.silu(z[:, t0:t1].to(wide))
        ctx.link, ctx.wide = link, wide
        ctx.save_for_backward(y0, z, H, delta, C, A_log, bias)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        y0, z, H, delta, C, A_log, bias = ctx.saved_tensors
        link, wide = ctx.link, ctx.wide
        A = -torch.exp(A_log.to(wide))
        Hw = H.to(wide)
        # gf overwrites g, chunk by chunk once the chunk's dz is computed, where g is a plain buffer of y0's
        # dtype (out_proj's input gradient): the backward then holds g, dz and the kept y0, not a fourth tensor.
        gf = g if g.dtype == y0.dtype and g.is_contiguous() else torch.empty_like(y0)
        dz = torch.empty_like(z)
        dH = torch.zeros_like(Hw)
        for i, (t0, t1) in enumerate(link.chunks):
            zc, gc = z[:, t0:t1].to(wide), g[:, t0:t1].to(wide)
            sz = torch.sigmoid(zc)
            gfc = gc * zc * sz
            pre = y0[:, t0:t1].to(wide)
            if i < link.live:
                _, _, E, Cc = _fold_terms(delta, C, A, bias, link.starts[i], t0, t1, wide)
                E.mul_(Cc[:, :, None])  # C E
                pre = pre + torch.einsum("btdn,bdn->btd", E, Hw)
                dH += torch.einsum("btdn,btd->bdn", E, gfc)
                del E
            dz[:, t0:t1] = gc * pre * sz * (1 + zc * (1 - sz))
            gf[:, t0:t1] = gfc  # after the last use of this chunk of g
        link.gf = gf
        return gf, dz, dH.to(H.dtype), None, None, None, None, None


def mamba_scan_carried(self, xc, delta, B, C, z, carry):
    """``Mamba.scan`` of this slice from the state carried in from the ranks before it, folded in closed form.

    The slice is scanned once, from a zero state, with D and without the gate (y0 and its final state S);
    ``carry(decay, S)`` returns the carried-in state H (B, Di, N) from the slice's decay product and final
    state (through the collective), plus anything to pass back; then out = (y0 + fold(H)) * silu(z), which is
    the scan from H (the scan is linear in its initial state: H reaches position t scaled by
    exp(A sum_{s<=t} Δ_s)). Returns ``(out, decay, S, extra)``."""
    link = _FoldLink()
    decay, delta, C = _SliceDecay.apply(delta, C, self.A_log, self.dt_proj.bias, link)
    wide = torch.promote_types(self.A_log.dtype, torch.float32)
    y0, last = kernels.selective_scan(
        xc.transpose(1, 2), delta.transpose(1, 2), -torch.exp(self.A_log.to(wide)), B.transpose(1, 2),
        C.transpose(1, 2), D=self.D.to(wide), delta_bias=self.dt_proj.bias.to(wide), delta_softplus=True,
        return_last_state=True)
    H, extra = carry(decay, last)
    out = _FoldGate.apply(y0.transpose(1, 2), z, H, delta, C, self.A_log, self.dt_proj.bias, link)
    return out, decay, last, extra


def _mamba_scan(self, xc, delta, B, C, z, initial_state=None, return_last_state=False):
    sp: SPState = self._sp

    def carry(decay, last):
        both = all_gather_stack(torch.stack([decay, last.to(decay.dtype)]), sp.group, sp.tag)  # (P, 2, B, Di, N)
        # States at every slice boundary, H_0 .. H_P, on every rank: each rank then differentiates through the
        # all-gather (rank 0 too, whose carried state does not depend on it), so every rank runs its backward.
        states = [initial_state.to(decay.dtype) if initial_state is not None else torch.zeros_like(decay)]
        for j in range(sp.size):
            states.append(both[j, 0] * states[-1] + both[j, 1])
        states = torch.stack(states)
        return states[sp.rank], states[sp.size]

    out, _, _, final = mamba_scan_carried(self, xc, delta, B, C, z, carry)
    return (out, final) if return_last_state else out


def wrap_mamba(module: nn.Module, sp: SPState) -> None:
    module._sp = sp
    _install(module, "conv", _mamba_conv)
    _install(module, "scan", _mamba_scan)


# ---------------------------------------------------------------------------------------------------------
# Transformer (DeepSpeed Ulysses)


def rope_angles_at(start: int, L: int, head_dim: int, theta: float, device, dtype):
    """``models.attention.rope_angles`` for positions ``start .. start+L-1`` (cos, sin: (L, head_dim))."""
    wide = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=wide) / head_dim)
    angles = torch.outer(torch.arange(start, start + L, device=device, dtype=wide), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


class _LocalCausalAttention(nn.Module):
    """The attention DistributedAttention runs between its all-to-alls: (B, L, H/P, hd) in and out."""

    def forward(self, q, k, v):
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return y.transpose(1, 2)


class _CountBackward(torch.autograd.Function):
    """Identity that records ``nbytes`` of backward traffic when its gradient passes (Ulysses' all-to-alls run
    inside DeepSpeed, so their bytes are accounted here)."""

    @staticmethod
    def forward(ctx, x, tag, nbytes):
        ctx.tag, ctx.nbytes = tag, nbytes
        return x.view_as(x)

    @staticmethod
    def backward(ctx, dx):
        record(ctx.tag, "ulysses_all_to_all", BACKWARD, ctx.nbytes)
        return dx, None, None


def _attention_forward(self, x: torch.Tensor) -> torch.Tensor:
    from models.attention import apply_rope

    sp: SPState = self._sp
    B, Ls = x.shape[:2]
    q, k, v = self.qkv(x).view(B, Ls, 3, self.n_head, self.head_dim).unbind(2)  # (B, Ls, H, hd) each
    cos, sin = rope_angles_at(sp.rank * Ls, Ls, self.head_dim, self.rope_theta, x.device, q.dtype)
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    nbytes = 4 * q.numel() * q.element_size() * (sp.size - 1) // sp.size  # q, k, v in; context out
    record(sp.tag, "ulysses_all_to_all", FORWARD, nbytes)
    y = self._sp_ulysses(q, k, v, 0)  # batch_dim_idx 0: (B, Ls, H, hd)
    y = _CountBackward.apply(y, sp.tag, nbytes)
    return self.out_proj(y.reshape(B, Ls, -1))  # (B, Ls, H * hd): H/tp heads under tensor parallelism


def wrap_attention(module: nn.Module, sp: SPState) -> None:
    if module.n_head % sp.size:
        raise ValueError(f"Transformer sequence parallelism (Ulysses) shards attention by heads: "
                         f"transformer.n_head={module.n_head} is not divisible by parallel.sequence={sp.size}")
    from deepspeed.sequence.layer import DistributedAttention

    module._sp = sp
    # A plain attribute, not a submodule: it holds no parameters and must not appear in the state dict.
    object.__setattr__(module, "_sp_ulysses",
                       DistributedAttention(_LocalCausalAttention(), sp.group, scatter_idx=2, gather_idx=1))
    _install(module, "forward", _attention_forward)

"""Sequence-parallel versions of the three mixers' sequence-mixing steps, installed on a module from outside.

Every rank of a sequence-parallel group holds the contiguous slice ``[r*Ls, (r+1)*Ls)`` of the same windows
(``L = P * Ls``); everything position-wise (projections, norms, MLPs, gates) runs on the slice unchanged. Only
the steps that mix along the sequence are replaced, per module instance (the model classes stay untouched):

- Hyena (``HyenaOperator.short_conv`` / ``long_conv``): a halo of k-1 positions before the causal short conv;
  around the FFT long conv an all-to-all from sequence to channel shards and back (one each way, carrying the
  gated product ``x1 * v``), with the implicit filter evaluated only for this rank's d/P channels, its MLP in
  chunks of positions and recomputed in the backward (no rank keeps the MLP's activations over the window).
- Mamba (``Mamba.conv`` / ``scan``): a halo of d_conv-1 positions before the causal conv; the scan is linear in
  its initial state, so each rank scans its slice from zero (final state S_r; without D and the gate, which do
  not enter it), computes the slice's decay
  product P_r = exp(A * sum_t softplus(delta_t + dt_bias)), all-gathers (P_r, S_r) — 2*B*Di*N numbers per
  rank, whatever L is — folds the state carried in from the ranks before it, H_r = P_{r-1} H_{r-1} + S_{r-1}
  (H_0 = initial_state or 0), and scans its slice again from H_r for its outputs. Gradients reach the earlier
  ranks through the all-gather's reduce-scatter. Every rank runs the same operations (also rank 0, whose
  carried state is 0), so the collectives of the backward line up on all ranks.
- Transformer (``CausalSelfAttention.forward``): DeepSpeed Ulysses (``DistributedAttention``): rotary angles of
  the GLOBAL positions ``r*Ls + t`` on the slice, then all-to-alls from sequence to head shards for q, k, v,
  causal attention over the whole window for H/P heads, and back.
"""

from __future__ import annotations

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


def mamba_decay_product(self, delta: torch.Tensor) -> torch.Tensor:
    """exp(A * sum_t Δ_t) over the slice, (B, Di, N): the factor by which the slice scales its initial state.
    Δ = softplus(delta + dt_proj.bias) and A = -exp(A_log) in the precision ``Mamba.scan`` uses. Keeps only
    ``delta`` (which the scan keeps anyway) for the backward, not a (B, L, Di) softplus input."""
    wide = torch.promote_types(self.A_log.dtype, torch.float32)
    return _DecayProduct.apply(delta, self.A_log, self.dt_proj.bias, wide)


def _decay(delta, A_log, bias, wide):
    """(s, exp(A s)) with s = sum_t softplus(delta_t + bias) over dim 1, (B, Di), and A = -exp(A_log)."""
    s = F.softplus(delta.to(wide) + bias.to(wide)).sum(dim=1)
    return s, torch.exp(s[..., None] * -torch.exp(A_log.to(wide)))


class _DecayProduct(torch.autograd.Function):
    """decay = exp(A s), s = sum_t softplus(delta_t + bias), A = -exp(A_log). Backward: ds = sum_n g decay A,
    d delta_t = ds sigmoid(delta_t + bias), d bias = sum_t d delta_t, d A_log = sum_b g decay s A."""

    @staticmethod
    def forward(ctx, delta, A_log, bias, wide):
        s, decay = _decay(delta, A_log, bias, wide)
        ctx.save_for_backward(delta, A_log, bias, s, decay)
        ctx.wide = wide
        return decay

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        delta, A_log, bias, s, decay = ctx.saved_tensors
        A = -torch.exp(A_log.to(ctx.wide))
        gd = g.to(ctx.wide) * decay  # (B, Di, N)
        ds = (gd * A).sum(dim=-1)  # (B, Di)
        x = delta.to(ctx.wide) + bias.to(ctx.wide)  # (B, L, Di); softplus' own backward (threshold 20)
        d_delta = torch.ops.aten.softplus_backward(ds[:, None].expand_as(x), x, 1.0, 20.0)
        del x
        d_bias = d_delta.sum(dim=(0, 1)).to(bias.dtype) if ctx.needs_input_grad[2] else None
        d_A_log = (gd * s[..., None]).sum(dim=0).mul_(A).to(A_log.dtype) if ctx.needs_input_grad[1] else None
        return d_delta.to(delta.dtype), d_A_log, d_bias, None


LAST_STATE_CHUNK = 1 << 14  # positions of the zero-state scan differentiated at once


def mamba_last_state(self, xc, delta, B, C) -> torch.Tensor:
    """The final state (B, Di, N) of ``Mamba.scan`` over the slice from a zero state.

    D and the gate z do not enter the state, so the scan runs without them, and its backward runs piece by piece
    (``LAST_STATE_CHUNK`` positions, last piece first, each from its saved start state, the state gradient
    carried back through the piece's decay product): it then holds no (B, L, Di) gradient for z or for the
    scan's unused output next to the other scan's gradients, only the ones it returns for xc and delta."""
    params = [p for p in (self.A_log, self.dt_proj.bias) if p.requires_grad]
    return _ZeroStateLast.apply(self, xc, delta, B, C, *params)


def _scan_last(self, xc, delta, B, C, h0) -> torch.Tensor:
    """``Mamba.scan``'s final state from ``h0`` (None: zero) without D and z."""
    wide = torch.promote_types(self.A_log.dtype, torch.float32)
    _, last = kernels.selective_scan(
        xc.transpose(1, 2), delta.transpose(1, 2), -torch.exp(self.A_log.to(wide)), B.transpose(1, 2),
        C.transpose(1, 2), delta_bias=self.dt_proj.bias.to(wide), delta_softplus=True, initial_state=h0,
        return_last_state=True)
    return last


class _ZeroStateLast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mixer, xc, delta, B, C, *params):
        pieces = [(t0, min(xc.shape[1], t0 + LAST_STATE_CHUNK)) for t0 in range(0, xc.shape[1], LAST_STATE_CHUNK)]
        starts, h = [], None
        for t0, t1 in pieces:
            starts.append(h)
            h = _scan_last(mixer, xc[:, t0:t1], delta[:, t0:t1], B[:, t0:t1], C[:, t0:t1], h)
        ctx.mixer, ctx.pieces, ctx.starts = mixer, pieces, starts
        ctx.save_for_backward(xc, delta, B, C)
        return h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        xc, delta, B, C = ctx.saved_tensors
        mixer = ctx.mixer
        params = [p for p in (mixer.A_log, mixer.dt_proj.bias) if p.requires_grad]
        dxc, ddelta, dB = torch.empty_like(xc), torch.empty_like(delta), torch.empty_like(B)
        dparams = [torch.zeros_like(p) for p in params]
        carry = g  # dL/d(state at the end of the piece)
        for (t0, t1), h0 in reversed(list(zip(ctx.pieces, ctx.starts))):
            ins = [t[:, t0:t1].detach().requires_grad_() for t in (xc, delta, B)]
            with torch.enable_grad():
                last = _scan_last(mixer, *ins, C[:, t0:t1], h0)
            grads = torch.autograd.grad(last, [*ins, *params], carry.to(last.dtype), allow_unused=True)
            del last
            for out, grad in zip((dxc, ddelta, dB), grads[:3]):
                out[:, t0:t1] = grad
            for acc, grad in zip(dparams, grads[3:]):
                if grad is not None:
                    acc += grad
            if t0 > 0:  # the state entering this piece reaches its end scaled by the piece's decay product
                carry = carry * _decay(delta[:, t0:t1], mixer.A_log, mixer.dt_proj.bias, carry.dtype)[1]
        return (None, dxc, ddelta, dB, None, *dparams)


def _mamba_scan(self, xc, delta, B, C, z, initial_state=None, return_last_state=False):
    sp: SPState = self._sp
    orig = self._sp_orig_scan
    last = mamba_last_state(self, xc, delta, B, C)  # this slice from a zero state
    decay = mamba_decay_product(self, delta)
    both = all_gather_stack(torch.stack([decay, last.to(decay.dtype)]), sp.group, sp.tag)  # (P, 2, B, Di, N)
    # States at every slice boundary, H_0 .. H_P, on every rank: each rank then differentiates through the
    # all-gather (rank 0 too, whose carried state does not depend on it), so every rank runs its backward.
    states = [initial_state.to(decay.dtype) if initial_state is not None else torch.zeros_like(last)]
    for j in range(sp.size):
        states.append(both[j, 0] * states[-1] + both[j, 1])
    states = torch.stack(states)
    out = orig(xc, delta, B, C, z, initial_state=states[sp.rank], return_last_state=return_last_state)
    return (out[0], states[sp.size]) if return_last_state else out


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

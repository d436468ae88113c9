"""Sequence-parallel versions of the three mixers' sequence-mixing steps, installed on a module from outside.

Every rank of a sequence-parallel group holds the contiguous slice ``[r*Ls, (r+1)*Ls)`` of the same windows
(``L = P * Ls``); everything position-wise (projections, norms, MLPs, gates) runs on the slice unchanged. Only
the steps that mix along the sequence are replaced, per module instance (the model classes stay untouched):

- Hyena (``HyenaOperator.short_conv`` / ``long_conv``): a halo of k-1 positions before the causal short conv;
  around the FFT long conv an all-to-all from sequence to channel shards and back (one each way, carrying the
  gated product ``x1 * v``), with the implicit filter evaluated only for this rank's d/P channels.
- Mamba (``Mamba.conv`` / ``scan``): a halo of d_conv-1 positions before the causal conv; the scan is linear in
  its initial state, so each rank scans its slice from zero (final state S_r), computes the slice's decay
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
from torch.utils.checkpoint import checkpoint

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


def _local_conv(self, orig, x: torch.Tensor, width: int) -> torch.Tensor:
    """A causal conv of ``width + 1`` taps on this rank's slice: halo, convolve, drop the halo's outputs."""
    sp: SPState = self._sp
    return orig(halo_exchange(x, width, sp.group, sp.tag))[:, width:]


# ---------------------------------------------------------------------------------------------------------
# Hyena


def hyena_channel_filter(filter_fn: nn.Module, L: int, lo: int, hi: int) -> torch.Tensor:
    """The implicit long filter of ``HyenaFilter`` for channels ``[lo, hi)`` only, (hi-lo, L): the MLP's last
    Linear (order -> d, no bias) and the decay window are evaluated on those rows, so no rank holds the (d, L)
    filter. Falls back to the whole filter, sliced, if the filter is not built as ``models.hyena`` builds it."""
    mlp = getattr(filter_fn, "implicit_filter", None)
    mod = getattr(filter_fn, "modulation", None)
    if not (isinstance(mlp, nn.Sequential) and isinstance(mlp[-1], nn.Linear) and hasattr(mod, "deltas")):
        return filter_fn.filter(L)[lo:hi]
    if getattr(filter_fn, "checkpoint", False) and torch.is_grad_enabled():
        return checkpoint(_channel_filter, filter_fn, L, lo, hi, use_reentrant=False)
    return _channel_filter(filter_fn, L, lo, hi)


def _channel_filter(filter_fn: nn.Module, L: int, lo: int, hi: int) -> torch.Tensor:
    dtype = filter_fn.bias.dtype
    z, t = filter_fn.pos_emb(L)
    mlp, mod = filter_fn.implicit_filter, filter_fn.modulation
    last = mlp[-1]
    h = z.to(dtype)
    for layer in list(mlp)[:-1]:  # the modules themselves (ZeRO-3 fetches their parameters in their hooks)
        h = layer(h)
    h = F.linear(h, last.weight[lo:hi], None if last.bias is None else last.bias[lo:hi])
    if mod.modulate:
        h = h * (torch.exp(-t.to(dtype) * mod.deltas[..., lo:hi].abs()) + mod.shift)
    return h[0].transpose(0, 1)


def _hyena_short_conv(self, u: torch.Tensor) -> torch.Tensor:
    return _local_conv(self, self._sp_orig_short_conv, u, self.short_filter.kernel_size[0] - 1)


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
    return _local_conv(self, self._sp_orig_conv, xin, self.conv1d.kernel_size[0] - 1)


def mamba_decay_product(self, delta: torch.Tensor) -> torch.Tensor:
    """exp(A * sum_t Δ_t) over the slice, (B, Di, N): the factor by which the slice scales its initial state.
    Δ = softplus(delta + dt_proj.bias) and A = -exp(A_log) in the precision ``Mamba.scan`` uses."""
    wide = torch.promote_types(self.A_log.dtype, torch.float32)
    dsum = F.softplus(delta.to(wide) + self.dt_proj.bias.to(wide)).sum(dim=1)  # (B, Di)
    return torch.exp(dsum[..., None] * -torch.exp(self.A_log.to(wide)))


def _mamba_scan(self, xc, delta, B, C, z, initial_state=None, return_last_state=False):
    sp: SPState = self._sp
    orig = self._sp_orig_scan
    _, last = orig(xc, delta, B, C, z, return_last_state=True)  # this slice from a zero state
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
    B, Ls, d = x.shape
    q, k, v = self.qkv(x).view(B, Ls, 3, self.n_head, self.head_dim).unbind(2)  # (B, Ls, H, hd) each
    cos, sin = rope_angles_at(sp.rank * Ls, Ls, self.head_dim, self.rope_theta, x.device, q.dtype)
    cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    nbytes = 4 * q.numel() * q.element_size() * (sp.size - 1) // sp.size  # q, k, v in; context out
    record(sp.tag, "ulysses_all_to_all", FORWARD, nbytes)
    y = self._sp_ulysses(q, k, v, 0)  # batch_dim_idx 0: (B, Ls, H, hd)
    y = _CountBackward.apply(y, sp.tag, nbytes)
    return self.out_proj(y.reshape(B, Ls, d))


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

"""HyenaDNA's Hyena operator of order 2 (the released training code's ``HyenaOperator`` / ``HyenaFilter``).

Shapes: x (B, L, d) in and out, L <= l_max. Inside, channels-first (B, C, L)::

    x0, x1, v = split(short_conv(in_proj(x)))            # in_proj d -> 3d (bias); causal depthwise conv, k = 3
    k = implicit_filter(z[:L]) * (exp(-t[:L] |δ|) + shift)  # (L, d) -> (d, L); z = [t, cos(f w), -sin(f w)]
    y = out_proj(x0 * fftconv(x1 * v, k, D))              # fftconv: causal conv by FFT of size 2L, + D * (x1 v)

The implicit filter is an MLP emb_dim -> order -> ... -> d (last layer without bias) whose activations are ONE
shared ``Sin`` module (learnable frequency, initially ``w``). ``z``, ``t`` (positional features on the l_max
grid) and ``δ`` (decay rates) are deterministic buffers created in float32 exactly as the reference creates
them (so a float64 copy of the model holds the same values); they are not saved in our checkpoints.
Parameter names match the reference's, so converted checkpoints map one to one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import kernels
import kernels.dispatch
from kernels.fftconv.ref import fftconv_backward_ref
from models.layers import (causal_depthwise_conv, causal_depthwise_conv_backward,
                           causal_depthwise_conv_forward, recompute)


class Sin(nn.Module):
    """``sin(freq * x)`` with a learnable per-feature frequency ``freq`` (1, dim), initially ``w``."""

    def __init__(self, dim: int, w: float = 10.0):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """Buffers ``z`` (1, l_max, emb_dim) = [t, Re e^{-i f w}, Im e^{-i f w}] and ``t`` (1, l_max, 1)."""

    def __init__(self, emb_dim: int, l_max: int):
        super().__init__()
        t = torch.linspace(0, 1, l_max)[None, :, None]
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, l_max - 1, l_max)[None, :, None]
        w = 2 * math.pi * t_rescaled / l_max
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        self.register_buffer("z", torch.cat([t, z.real, z.imag], dim=-1), persistent=False)
        self.register_buffer("t", t, persistent=False)

    def forward(self, L: int):
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    """Decay window ``exp(-t |δ|) + shift``, δ linear over channels from ln(target)/slow to ln(target)/fast."""

    def __init__(self, d_model: int, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2, shift=0.0, modulate=True):
        super().__init__()
        self.modulate, self.shift = modulate, shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None], persistent=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if not self.modulate:
            return x
        return x * (torch.exp(-t * self.deltas.abs()) + self.shift)


class HyenaFilter(nn.Module):
    """Implicit long filter h(t) (an MLP of positional features, times a decay window) and the bias ``D``."""

    def __init__(self, d_model: int, l_max: int, cfg):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(d_model))  # D, the skip term of the long conv
        self.pos_emb = PositionalEmbedding(cfg.emb_dim, l_max)
        act = Sin(cfg.filter_order, w=cfg.w)  # one module, used after every hidden layer
        layers = [nn.Linear(cfg.emb_dim, cfg.filter_order), act]
        for _ in range(cfg.num_inner_mlps):
            layers += [nn.Linear(cfg.filter_order, cfg.filter_order), act]
        layers.append(nn.Linear(cfg.filter_order, d_model, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(d_model, cfg.fast_decay_pct, cfg.slow_decay_pct, cfg.target,
                                                cfg.shift, cfg.modulate)
        self._window = None  # cached decay window (d, L): it depends on buffers only

    def filter(self, L: int) -> torch.Tensor:
        """The long filter for the first L positions, (d, L), contiguous.

        Computed channels-first: the last Linear as ``W @ a^T`` (so the FFT reads contiguous rows, no transpose)
        and the decay window, which depends on the buffers only, cached per (L, dtype, device). Same values as
        ``modulation(t, implicit_filter(z))[0].T``. Under autograd the MLP keeps nothing for the backward (its
        activations, ~9 x filter_order floats per position, are more than the filter itself): it is recomputed
        there from the positional buffer (``models.layers.recompute``), a few percent of the step's work.
        """
        z, _ = self.pos_emb(L)
        params = [p for p in self.implicit_filter.parameters() if p.requires_grad]
        if torch.is_grad_enabled() and params:
            return recompute(self._filter, z[0], params)
        return self._filter(z[0])

    def _filter(self, z: torch.Tensor) -> torch.Tensor:
        dtype, L = self.bias.dtype, z.shape[0]
        a = self.implicit_filter[:-1](z.to(dtype))  # (L, order)
        k = torch.mm(self.implicit_filter[-1].weight, a.t())  # (d, L)
        window = self._decay_window(L, dtype, k.device)
        return k if window is None else k * window

    def _decay_window(self, L: int, dtype: torch.dtype, device) -> torch.Tensor | None:
        mod = self.modulation
        if not mod.modulate:
            return None
        w = self._window
        if w is None or w.shape[1] < L or w.dtype != dtype or w.device != device:
            t = self.pos_emb.t[0, :, 0].to(dtype)  # the whole l_max grid, once
            w = torch.exp(-t[None, :] * mod.deltas[0, 0].to(dtype).abs()[:, None]) + mod.shift
            self._window = w
        return w[:, :L]

    def _apply(self, fn, *args, **kwargs):  # .to() / .double() / .cuda(): drop the cached window
        self._window = None
        return super()._apply(fn, *args, **kwargs)


class HyenaOperator(nn.Module):
    """Hyena mixer of order 2 (see the module docstring). ``forward(x (B, L, d)) -> (B, L, d)``."""

    def __init__(self, d_model: int, l_max: int, cfg):
        super().__init__()
        self.d_model, self.l_max = d_model, l_max
        self.out_proj = nn.Linear(d_model, d_model)  # created first, as in the reference (state-dict order)
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        k = cfg.short_filter_order
        self.short_filter = nn.Conv1d(3 * d_model, 3 * d_model, kernel_size=k, groups=3 * d_model, padding=k - 1)
        self.filter_fn = HyenaFilter(d_model, l_max, cfg)
        # The reference keeps the filter MLP (Sin frequency included) free of weight decay (layer.wd = 0.0);
        # biases (D included) and norms are excluded by its optimizer hooks.
        for p in self.filter_fn.implicit_filter.parameters():
            p._no_weight_decay = True
        for p in (self.filter_fn.bias, self.in_proj.bias, self.out_proj.bias, self.short_filter.bias):
            p._no_weight_decay = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[1]
        if L > self.l_max:
            raise ValueError(f"Hyena: sequence length {L} exceeds l_max={self.l_max} (the filters' length)")
        if self._fused(x):
            p = self.in_proj(x)  # (B, L, 3d)
            k = self.filter_fn.filter(L)
            conv = self.short_filter
            return self.out_proj(_GatedLongConv.apply(p, conv.weight, conv.bias, k, self.filter_fn.bias))
        uc = self.short_conv(self.in_proj(x))  # (B, L, 3d)
        x0, x1, v = uc.split(self.d_model, dim=-1)
        return self.out_proj(self.long_conv(x1 * v) * x0)

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether the conv - gate - FFT conv - gate chain runs as one autograd Function (``_GatedLongConv``):
        with the torch FFT conv (CPU), without autocast, and only when neither step was replaced on this
        instance from outside (sequence parallelism installs its own ``short_conv`` / ``long_conv``)."""
        return ("short_conv" not in self.__dict__ and "long_conv" not in self.__dict__
                and kernels.dispatch.resolve_impl("fftconv", None, x) == "torch"
                and not torch.is_autocast_enabled(x.device.type)
                and x.dtype == self.short_filter.weight.dtype == self.filter_fn.bias.dtype)

    # The two steps that mix along the sequence, separate so that sequence parallelism can wrap them (a halo
    # exchange of k-1 tokens before the short conv; sequence <-> channel all-to-all around the long conv).

    def short_conv(self, u: torch.Tensor) -> torch.Tensor:
        """``short_filter`` (causal, depthwise, k taps) on u (B, L, 3d)."""
        return causal_depthwise_conv(u, self.short_filter.weight, self.short_filter.bias)

    def long_conv(self, v: torch.Tensor) -> torch.Tensor:
        """The implicit long filter (plus D) applied causally to v (B, L, d) by FFT; returns (B, L, d)."""
        k = self.filter_fn.filter(v.shape[1])
        return kernels.fftconv(v.transpose(1, 2), k, self.filter_fn.bias).transpose(1, 2)


class _GatedLongConv(torch.autograd.Function):
    """``x0 * fftconv(x1 * v, k, D)`` with ``(x0, x1, v) = short_conv(p)``, keeping for the backward only ``p``
    (the in_proj output, which the conv's backward needs anyway), ``k`` and the long conv's output: the conv
    output (3 floats per token and channel) and the gated product are recomputed there (a few multiply-adds).
    Same arithmetic as ``HyenaOperator``'s step-by-step path (``short_conv``, ``long_conv``), 4·d fewer floats
    per token kept."""

    @staticmethod
    def forward(ctx, p, conv_w, conv_b, k, D):
        d = p.shape[-1] // 3
        x0, x1, v = causal_depthwise_conv_forward(p, conv_w, conv_b).split(d, dim=-1)
        y = kernels.fftconv(x1.mul(v).transpose(1, 2), k, D, impl="torch").transpose(1, 2)  # (B, L, d)
        ctx.save_for_backward(p, conv_w, conv_b, k, D, y)
        return y * x0

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        p, conv_w, conv_b, k, D, y = ctx.saved_tensors
        d = p.shape[-1] // 3
        groups = _backward_groups(p.shape[0], d, p.shape[1])
        if len(groups) > 1:
            return _gated_long_conv_backward_grouped(p, conv_w, conv_b, k, D, y, g, groups)
        uc = causal_depthwise_conv_forward(p, conv_w, conv_b)
        x0, x1, v = uc.split(d, dim=-1)
        duc = torch.empty_like(uc)
        dx0, dx1, dv = duc.split(d, dim=-1)
        torch.mul(g, y, out=dx0)
        del y
        dw, dk, dD = fftconv_backward_ref(x1.mul(v).transpose(1, 2), k, D, (g * x0).transpose(1, 2))
        dw = dw.transpose(1, 2)
        torch.mul(dw, v, out=dx1)
        torch.mul(dw, x1, out=dv)
        del uc, dw
        dp, dconv_w, dconv_b = causal_depthwise_conv_backward(p, conv_w, conv_b, duc)
        return dp, dconv_w, dconv_b, dk, dD


# Channels per group in _GatedLongConv's backward at long L: the group's spectra (batch x group x (L+1) complex
# numbers) stay near this many elements (16 MiB in complex64). The backward's transients (the recomputed short
# conv output, its gradient, the FFT buffers) then scale with the group instead of with all d channels.
BACKWARD_GROUP_ELEMENTS = 1 << 21


def _backward_groups(batch: int, d: int, length: int) -> list[tuple[int, int]]:
    step = max(1, BACKWARD_GROUP_ELEMENTS // (batch * (length + 1)))
    return [(c0, min(c0 + step, d)) for c0 in range(0, d, step)]


def _gated_long_conv_backward_grouped(p, conv_w, conv_b, k, D, y, g, groups):
    """``_GatedLongConv.backward`` one channel group at a time: every step of the chain (short conv, gates, FFT
    conv) is per channel, so each group's x0 / x1 / v columns are recomputed, differentiated and written into
    ``dp`` on their own; only ``dp`` and the parameter gradients are full size."""
    d = p.shape[-1] // 3
    dp = torch.empty_like(p)
    dconv_w, dconv_b = torch.empty_like(conv_w), torch.empty_like(conv_b) if conv_b is not None else None
    dk, dD = torch.empty_like(k), torch.empty_like(D)
    for c0, c1 in groups:
        cols = [slice(j * d + c0, j * d + c1) for j in range(3)]
        x0, x1, v = (causal_depthwise_conv_forward(p[..., c], conv_w[c], None if conv_b is None else conv_b[c])
                     for c in cols)
        gc = g[..., c0:c1]
        dw, dk[c0:c1], dD[c0:c1] = fftconv_backward_ref(x1.mul(v).transpose(1, 2), k[c0:c1], D[c0:c1],
                                                        (gc * x0).transpose(1, 2))
        dw = dw.transpose(1, 2)
        for c, dx in zip(cols, (gc * y[..., c0:c1], dw * v, dw * x1)):
            dpc, dconv_w[c], dbc = causal_depthwise_conv_backward(p[..., c], conv_w[c],
                                                                  None if conv_b is None else conv_b[c], dx)
            dp[..., c] = dpc
            if conv_b is not None:
                dconv_b[c] = dbc
        del x0, x1, v, dw
    return dp, dconv_w, dconv_b, dk, dD

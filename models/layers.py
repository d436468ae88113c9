"""Shared building blocks: norms (NVIDIA apex's fused kernels when importable, torch otherwise) and MLPs.

Both norm implementations have the same parameters (``weight`` [+ ``bias``]) and the same math, so state dicts
move freely between machines with and without apex. apex's modules fall back to plain torch on CPU tensors.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn


def _apex_norm(name: str):
    """apex.normalization.<name> if apex is importable (GPU clusters), else None."""
    try:
        return getattr(importlib.import_module("apex.normalization"), name)
    except (ImportError, AttributeError, OSError):
        return None


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * weight`` over the last axis (no bias), as mamba_ssm's ``rms_norm_ref``."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(kind: str, dim: int, eps: float) -> nn.Module:
    """A ``"layer"`` (LayerNorm, weight + bias) or ``"rms"`` (RMSNorm, weight) norm; apex's fused one if present.

    Norm parameters are tagged ``_no_weight_decay`` (all three reference codebases exclude them).
    """
    if kind == "layer":
        cls = _apex_norm("FusedLayerNorm")
        norm = cls(dim, eps=eps) if cls is not None else nn.LayerNorm(dim, eps=eps)
    elif kind == "rms":
        cls = _apex_norm("FusedRMSNorm")
        norm = cls(dim, eps=eps) if cls is not None else RMSNorm(dim, eps=eps)
    else:
        raise ValueError(f"norm kind must be 'layer' or 'rms', got {kind!r}")
    for p in norm.parameters():
        p._no_weight_decay = True
    return norm


class Mlp(nn.Module):
    """``fc2(gelu_tanh(fc1(x)))`` with biases (flash-attn's ``Mlp`` as used by HyenaDNA)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class GatedMlp(nn.Module):
    """SwiGLU: ``fc2(a * silu(gate))`` with ``(a, gate) = fc1(x).chunk(2)``, no biases (mamba_ssm's GatedMLP)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * F.silu(gate))


def tag_no_weight_decay(module: nn.Module) -> None:
    """Tag every bias of ``module`` (parameters named ``*bias``) ``_no_weight_decay``."""
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p._no_weight_decay = True


def causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                          silu: bool = False) -> torch.Tensor:
    """Causal depthwise convolution over time in (B, L, C) layout: ``nn.Conv1d(C, C, k, groups=C, padding=k-1)``
    applied to ``x`` channels-first and truncated to the first L outputs, without the transposes.

    ``y[b, t, c] = bias[c] + sum_j weight[c, 0, j] * x[b, t - (k-1) + j, c]`` (zero before t = 0), followed by
    ``silu`` if asked. ``weight`` has ``nn.Conv1d``'s shape (C, 1, k). Computed as k shifted multiply-adds in
    ``x``'s dtype (torch's CPU depthwise conv1d backward is orders of magnitude slower); the backward saves only
    ``x`` and recomputes the convolution (and the activation's input).
    """
    if x.dim() != 3 or weight.shape != (x.shape[2], 1, weight.shape[2]):
        raise ValueError(f"causal_depthwise_conv: x (B, L, C) and weight (C, 1, k) expected, got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    return _CausalDepthwiseConv.apply(x, weight, bias, silu)


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    w = weight[:, 0].to(x.dtype)  # (C, k); tap j looks back k-1-j steps
    k, L = w.shape[1], x.shape[1]
    y = x * w[:, k - 1]
    for j in range(k - 1):
        s = k - 1 - j
        if s < L:
            y[:, s:].addcmul_(x[:, : L - s], w[:, j])
    if bias is not None:
        y += bias.to(x.dtype)
    return y


class _CausalDepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        y = _conv(x, weight, bias)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return F.silu(y, inplace=True) if silu else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        if ctx.silu:  # d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p), with p the recomputed pre-activation
            p = _conv(x, weight, bias)
            s = torch.sigmoid(p)
            dy = dy * s * (1 + p * (1 - s))
        w = weight[:, 0].to(x.dtype)
        k, L = w.shape[1], x.shape[1]
        dx = dy * w[:, k - 1]
        dw = torch.zeros_like(w)
        dw[:, k - 1] = torch.einsum("blc,blc->c", dy, x)
        for j in range(k - 1):
            s = k - 1 - j
            if s < L:
                dx[:, : L - s].addcmul_(dy[:, s:], w[:, j])
                dw[:, j] = torch.einsum("blc,blc->c", dy[:, s:], x[:, : L - s])
        dbias = dy.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dw.to(weight.dtype)[:, None], dbias, None

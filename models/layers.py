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

"""Causal multi-head self-attention with rotary position embeddings (the Transformer++ mixer).

x (B, L, d) -> qkv (no bias) -> heads (B, H, L, d/H) -> RoPE on q, k (rotate-half form, base ``rope_theta``,
angles computed in float32 or wider) -> ``scaled_dot_product_attention(is_causal=True)`` -> out_proj (no bias).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(L: int, head_dim: int, theta: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (L, head_dim), position p and pair i: p / theta^(2i / head_dim)."""
    wide = torch.promote_types(dtype, torch.float32)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=wide) / head_dim)
    angles = torch.outer(torch.arange(L, device=device, dtype=wide), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i + head_dim/2}) of x (..., L, head_dim) by the angles."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """``forward(x (B, L, d)) -> (B, L, d)``; causal, RoPE, no biases."""

    def __init__(self, d_model: int, n_head: int, rope_theta: float = 10000.0):
        super().__init__()
        self.n_head, self.head_dim, self.rope_theta = n_head, d_model // n_head, rope_theta
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L = x.shape[:2]
        q, k, v = self.qkv(x).view(B, L, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        cos, sin = rope_angles(L, self.head_dim, self.rope_theta, x.device, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, L, hd)
        return self.out_proj(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, H * hd)

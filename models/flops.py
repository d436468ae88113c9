"""Analytic training FLOPs per token (forward + backward), for MFU.

Conventions: a multiply-add is 2 FLOPs; the backward costs twice the forward, so training = 3 x forward.
Counted: every dense layer (Linear, the depthwise convolutions, the tied LM head), plus per architecture

- hyena: the implicit filter MLP, evaluated once per sequence at each of its L positions (so per token it is
  the MLP cost of one position: exact for batch 1, an upper bound for larger batches); the FFT convolution,
  per channel three real FFTs of size 2L at 2.5·n·log2(n) FLOPs each plus the spectral product (6 FLOPs per
  frequency): ``(15·log2(2L) + 6)`` per channel and token;
- mamba: the selective scan, 9·Di·N per token (mamba's own count: discretisation, state update, readout);
- transformer: causal attention, QK^T and AV over on average L/2 keys: ``2·d·L`` per token.

Not counted: norms, activations, gating products, residual adds, embedding look-up (memory bound, small).
"""

from __future__ import annotations

import math

from models.config import ModelConfig


def flops_breakdown(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token by kind: ``dense`` (matmuls and convolutions) and ``fft`` / ``scan`` / ``attention``."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    d, L, n_layer = cfg.d_model, seq_len, cfg.n_layer
    dense, extra = 2.0 * d * cfg.padded_vocab_size, 0.0  # LM head
    h = cfg.mlp_width
    if cfg.arch == "hyena":
        f, hc = cfg.hyena.filter_order, cfg.hyena
        mixer = 2 * d * 3 * d + 2 * d * d + 2 * 3 * d * hc.short_filter_order
        mixer += 2 * (hc.emb_dim * f + hc.num_inner_mlps * f * f + f * d)
        mlp = 4 * d * h
        extra = n_layer * d * (15 * math.log2(2 * L) + 6)
        kind = "fft"
    elif cfg.arch == "mamba":
        m = cfg.mamba
        di, N, R = m.expand * d, m.d_state, cfg.dt_rank
        mixer = 2 * d * 2 * di + 2 * di * m.d_conv + 2 * di * (R + 2 * N) + 2 * R * di + 2 * di * d
        mlp = 6 * d * h
        extra = n_layer * 9 * di * N
        kind = "scan"
    else:
        mixer = 2 * d * 3 * d + 2 * d * d
        mlp = 6 * d * h
        extra = n_layer * 2 * d * L
        kind = "attention"
    dense += n_layer * (mixer + mlp)
    return {"dense": float(dense), kind: float(extra)}


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) per token at sequence length ``seq_len``."""
    return 3.0 * sum(flops_breakdown(cfg, seq_len).values())

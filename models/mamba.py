"""Mamba-1 mixer (mamba_ssm's ``Mamba``; the selective scan is ``kernels.selective_scan``).

Shapes: x (B, L, d) in and out; Di = expand·d, N = d_state, R = dt_rank::

    xin, z = in_proj(x).chunk(2)                          # d -> 2 Di, no bias
    xc = silu(causal_depthwise_conv(xin))                 # kernel d_conv, left zero padding
    dt, B, C = x_proj(xc).split([R, N, N])                # no bias
    delta = dt @ dt_proj.weight^T                         # the dt_proj BIAS is added inside the scan (delta_bias)
    y = selective_scan(xc, delta, A=-exp(A_log), B, C, D, z, delta_bias=dt_proj.bias, delta_softplus=True)
    out = out_proj(y)                                     # Di -> d, no bias

Initialisation (mamba_ssm): dt_proj.weight ~ U(±R^-0.5·dt_scale); dt_proj.bias = softplus^-1(dt) with dt
log-uniform in [dt_min, dt_max] floored at dt_init_floor; A_log = ln(1..N) per channel; D = 1; the other
layers keep torch's default init (the LM re-initialises out_proj, see ``models.lm``). A_log, D and dt_proj.bias
are used in at least float32 even when the module is cast to half precision; A_log, D and biases are tagged
``_no_weight_decay``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from models.layers import causal_depthwise_conv


class Mamba(nn.Module):
    """Mamba-1 selective SSM mixer. ``forward(x (B, L, d)) -> (B, L, d)``."""

    def __init__(self, d_model: int, cfg, dt_rank: int):
        super().__init__()
        di, n = cfg.expand * d_model, cfg.d_state
        self.d_inner, self.d_state, self.dt_rank = di, n, dt_rank
        A = torch.arange(1, n + 1, dtype=torch.float32).repeat(di, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(di))
        self.in_proj = nn.Linear(d_model, 2 * di, bias=cfg.bias)
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1, bias=cfg.conv_bias)
        self.x_proj = nn.Linear(di, dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(dt_rank, di, bias=True)
        self.out_proj = nn.Linear(di, d_model, bias=cfg.bias)
        self._init_dt(cfg)
        for name, p in self.named_parameters():
            if name in ("A_log", "D") or name.endswith("bias"):
                p._no_weight_decay = True

    @torch.no_grad()
    def _init_dt(self, cfg) -> None:
        std = self.dt_rank ** -0.5 * cfg.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        log_lo, log_hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(self.d_inner) * (log_hi - log_lo) + log_lo).clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        self.dt_proj.bias._no_reinit = True  # the LM's init must not zero it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xin, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, Di) each
        xc = self.conv(xin)
        dt, B, C = self.x_proj(xc).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, self.dt_proj.weight)  # (B, L, Di); the dt_proj bias is added inside the scan
        return self.out_proj(self.scan(xc, delta, B, C, z))

    # The two steps that mix along the sequence, separate so that sequence parallelism can wrap them.

    def conv(self, xin: torch.Tensor) -> torch.Tensor:
        """silu(conv1d(xin)), causal and depthwise, on (B, L, Di)."""
        return causal_depthwise_conv(xin, self.conv1d.weight, self.conv1d.bias, silu=True)

    def scan(self, xc, delta, B, C, z, initial_state=None, return_last_state=False):
        """The selective scan on (B, L, ·) tensors; returns y (B, L, Di) (and the last state (B, Di, N))."""
        wide = torch.promote_types(self.A_log.dtype, torch.float32)  # A, D, dt bias in >= float32
        out = kernels.selective_scan(
            xc.transpose(1, 2), delta.transpose(1, 2), -torch.exp(self.A_log.to(wide)), B.transpose(1, 2),
            C.transpose(1, 2), D=self.D.to(wide), z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.to(wide),
            delta_softplus=True, initial_state=initial_state, return_last_state=return_last_state,
        )
        if return_last_state:
            return out[0].transpose(1, 2), out[1]
        return out.transpose(1, 2)

"""Stand-in for mamba_ssm's ``MambaLMHeadModel`` on CPU (Mamba-1), in plain torch: the baseline of bench/cpu_speed.py.

Written from the published equations (``models/mamba.py``'s docstring, ``data/sample/golden/README.md`` §4) with the
reference's operation order and module names (``state-spaces/mamba``: ``mamba_simple.Mamba.forward``'s slow path,
``selective_scan_interface.selective_scan_ref``, ``modules/block.Block`` non-fused, ``MixerModel``,
``layer_norm.rms_norm_ref``), so the reference's ``pytorch_model.bin`` loads as is. On CPU the reference has
neither ``causal_conv1d`` nor ``selective_scan_cuda``: ``Mamba.forward`` takes the slow path (``nn.Conv1d`` +
SiLU, then ``selective_scan_fn``, which is ``selective_scan_ref`` without the CUDA extension), exactly this:

* ``selective_scan_ref``: Δ = softplus(delta + bias); ``deltaA = exp(einsum('bdl,dn->bdln'))`` and
  ``deltaB_u = einsum('bdl,bnl,bdl->bdln')`` materialised for the whole sequence, then the sequential loop over
  time ``x = deltaA[:, :, i] * x + deltaB_u[:, :, i]``, ``y = einsum('bdn,bn->bd', x, C[:, :, i])``, ``stack``,
  ``+ u D``, ``* silu(z)``; backward by autograd through the loop.

The float32 casts (``.float()``) of the reference are written as ``.to(self_dtype_at_least_float32)`` so that a
float64 copy stays float64 (the golden README's float64 shim; in float32 they are the same no-op casts).
``tests/bench/test_reference_standins.py`` checks it equal to ``models`` on the golden weights in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _f(x):
    """``x.float()``, except that float64 stays float64 (the goldens' float64 shim)."""
    return x if x.dtype == torch.float64 else x.float()


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    dtype_in = u.dtype
    u = _f(u)
    delta = _f(delta)
    if delta_bias is not None:
        delta = delta + _f(delta_bias[..., None])
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, dstate = u.shape[0], A.shape[0], A.shape[1]
    is_variable_B = B.dim() >= 3
    is_variable_C = C.dim() >= 3
    B = _f(B)
    C = _f(C)
    x = A.new_zeros((batch, dim, dstate))
    ys = []
    deltaA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    if not is_variable_B:
        deltaB_u = torch.einsum("bdl,dn,bdl->bdln", delta, B, u)
    elif B.dim() == 3:
        deltaB_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    else:
        B = B.repeat_interleave(dim // B.shape[1], dim=1)  # repeat "B G N L -> B (G H) N L"
        deltaB_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    if is_variable_C and C.dim() == 4:
        C = C.repeat_interleave(dim // C.shape[1], dim=1)
    last_state = None
    for i in range(u.shape[2]):
        x = deltaA[:, :, i] * x + deltaB_u[:, :, i]
        if not is_variable_C:
            y = torch.einsum("bdn,dn->bd", x, C)
        elif C.dim() == 3:
            y = torch.einsum("bdn,bn->bd", x, C[:, :, i])
        else:
            y = torch.einsum("bdn,bdn->bd", x, C[:, :, :, i])
        if i == u.shape[2] - 1:
            last_state = x
        ys.append(y)
    y = torch.stack(ys, dim=2)  # (batch dim L)
    out = y if D is None else y + u * D[:, None]
    if z is not None:
        out = out * F.silu(z)
    out = out.to(dtype=dtype_in)
    return out if not return_last_state else (out, last_state)


class Mamba(nn.Module):
    def __init__(self, d_model, d_state=16, d_conv=4, expand=2, dt_rank="auto", conv_bias=True, bias=False):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(self.expand * self.d_model)
        self.dt_rank = math.ceil(self.d_model / 16) if dt_rank == "auto" else dt_rank
        self.in_proj = nn.Linear(self.d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, bias=conv_bias, kernel_size=d_conv, groups=self.d_inner,
                                padding=d_conv - 1)
        self.act = nn.SiLU()
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + self.d_state * 2, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, self.d_model, bias=bias)

    def forward(self, hidden_states):
        batch, seqlen, dim = hidden_states.shape
        # rearrange(W @ rearrange(h, "b l d -> d (b l)"), "d (b l) -> b d l")
        xz = self.in_proj.weight @ hidden_states.reshape(batch * seqlen, dim).t()
        xz = xz.reshape(xz.shape[0], batch, seqlen).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(dtype=xz.dtype)[:, None]
        A = -torch.exp(_f(self.A_log))
        x, z = xz.chunk(2, dim=1)
        x = self.act(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.permute(0, 2, 1).reshape(batch * seqlen, -1))  # "b d l -> (b l) d"
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = self.dt_proj.weight @ dt.t()
        dt = dt.reshape(dt.shape[0], batch, seqlen).permute(1, 0, 2)  # "d (b l) -> b d l"
        B = B.reshape(batch, seqlen, -1).permute(0, 2, 1).contiguous()  # "(b l) dstate -> b dstate l"
        C = C.reshape(batch, seqlen, -1).permute(0, 2, 1).contiguous()
        y = selective_scan_ref(x, dt, A, B, C, _f(self.D), z=z, delta_bias=_f(self.dt_proj.bias),
                               delta_softplus=True)
        y = y.permute(0, 2, 1)  # "b d l -> b l d"
        return self.out_proj(y)


class RMSNorm(nn.Module):
    def __init__(self, hidden_size, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x):  # rms_norm_ref(x, weight, None, eps, upcast=False)
        dtype = x.dtype
        rstd = 1 / torch.sqrt((x.square()).mean(dim=-1, keepdim=True) + self.eps)
        return (x * rstd * self.weight).to(dtype)


class Block(nn.Module):
    def __init__(self, dim, mixer, residual_in_fp32=True):
        super().__init__()
        self.residual_in_fp32 = residual_in_fp32
        self.mixer = mixer
        self.norm = RMSNorm(dim)

    def forward(self, hidden_states, residual=None):
        residual = (hidden_states + residual) if residual is not None else hidden_states
        hidden_states = self.norm(residual.to(dtype=self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        return self.mixer(hidden_states), residual


class MixerModel(nn.Module):
    def __init__(self, d_model, n_layer, vocab_size, residual_in_fp32=True, **ssm_cfg):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(Block(d_model, Mamba(d_model, **ssm_cfg), residual_in_fp32)
                                    for _ in range(n_layer))
        self.norm_f = RMSNorm(d_model)

    def forward(self, input_ids):
        hidden_states, residual = self.embedding(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        residual = (hidden_states + residual) if residual is not None else hidden_states
        return self.norm_f(residual.to(dtype=self.norm_f.weight.dtype))


class MambaLMHeadModel(nn.Module):
    def __init__(self, d_model=128, n_layer=2, vocab_size=16, residual_in_fp32=True, **ssm_cfg):
        super().__init__()
        self.backbone = MixerModel(d_model, n_layer, vocab_size, residual_in_fp32, **ssm_cfg)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embedding.weight

    def forward(self, input_ids):
        return self.lm_head(self.backbone(input_ids))


def from_golden(directory, residual_in_fp32: bool = True) -> MambaLMHeadModel:
    """The stand-in with the weights of a mamba_ssm directory (``config.json`` + ``pytorch_model.bin``)."""
    import json
    from pathlib import Path

    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    m = cfg.get("pad_vocab_size_multiple", 8)
    vocab = -(-cfg["vocab_size"] // m) * m
    model = MambaLMHeadModel(cfg["d_model"], cfg["n_layer"], vocab, residual_in_fp32, **(cfg.get("ssm_cfg") or {}))
    model.load_state_dict(torch.load(directory / "pytorch_model.bin", weights_only=True), strict=True)
    return model

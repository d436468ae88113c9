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
    """``fc2(gelu_tanh(fc1(x)))`` with biases (flash-attn's ``Mlp`` as used by HyenaDNA).

    When ``fc1`` / ``fc2`` are plain ``nn.Linear`` modules without hooks (not replaced or wrapped from outside,
    e.g. by tensor parallelism or ZeRO-3) and autocast is off, the block runs as one autograd Function that
    keeps only its input and ``fc1``'s output for the backward and recomputes the GELU there (elementwise):
    4·dim fewer floats per token than autograd, which also keeps the GELU's output for fc2's weight gradient.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc1, fc2 = self.fc1, self.fc2
        if (plain_linear(fc1) and plain_linear(fc2) and not torch.is_autocast_enabled(x.device.type)
                and x.dtype == fc1.weight.dtype == fc2.weight.dtype):
            return _GeluMlp.apply(x, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
        return fc2(F.gelu(fc1(x), approximate="tanh"))


def plain_linear(m: nn.Module) -> bool:
    """Whether ``m`` is exactly an ``nn.Linear`` that no hook wraps (so calling F.linear with its weights is
    the same as calling it)."""
    from torch.nn.modules import module as _module

    return (type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
            and not _module._global_forward_hooks and not _module._global_forward_pre_hooks)


class _GeluMlp(torch.autograd.Function):
    """fc2(gelu_tanh(fc1(x))) saving x and fc1's output only; the GELU is recomputed in the backward."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        h = F.linear(x, w1, b1)
        ctx.save_for_backward(x, h, w1, w2)
        ctx.has_bias = (b1 is not None, b2 is not None)
        return F.linear(F.gelu(h, approximate="tanh"), w2, b2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        x, h, w1, w2 = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        step = max(1, MLP_BACKWARD_CHUNK_ELEMENTS // h.shape[-1])
        if g2.shape[0] > step:
            return _gelu_mlp_backward_chunked(ctx, x, h, w1, w2, g2, step)
        a = F.gelu(h, approximate="tanh").reshape(-1, h.shape[-1])
        dw2 = g2.t().mm(a)
        del a
        dh = torch.ops.aten.gelu_backward(torch.matmul(g, w2), h, approximate="tanh")
        dh2 = dh.reshape(-1, dh.shape[-1])
        dw1 = dh2.t().mm(x.reshape(-1, x.shape[-1]))
        db1 = dh2.sum(0) if ctx.has_bias[0] else None
        db2 = g2.sum(0) if ctx.has_bias[1] else None
        dx = torch.matmul(dh, w1) if ctx.needs_input_grad[0] else None
        return dx, dw1, db1, dw2, db2


# Rows per chunk of _GeluMlp's backward at long L: chunk x hidden stays near this many elements (16 MiB in
# float32), so the recomputed GELU and the hidden gradient are chunk-sized transients, not (tokens, hidden) ones.
MLP_BACKWARD_CHUNK_ELEMENTS = 1 << 22


def _gelu_mlp_backward_chunked(ctx, x, h, w1, w2, g2, step):
    """``_GeluMlp.backward`` over chunks of ``step`` tokens (weight gradients accumulated chunk by chunk)."""
    x2, h2 = x.reshape(-1, x.shape[-1]), h.reshape(-1, h.shape[-1])
    dw1, dw2 = torch.zeros_like(w1), torch.zeros_like(w2)
    db1 = torch.zeros(h2.shape[1], dtype=h2.dtype, device=h2.device) if ctx.has_bias[0] else None
    dx = torch.empty_like(x2) if ctx.needs_input_grad[0] else None
    for r0 in range(0, g2.shape[0], step):
        rows = slice(r0, r0 + step)
        gc, hc = g2[rows], h2[rows]
        dw2.addmm_(gc.t(), F.gelu(hc, approximate="tanh"))
        dh = torch.ops.aten.gelu_backward(gc.mm(w2), hc, approximate="tanh")
        dw1.addmm_(dh.t(), x2[rows])
        if db1 is not None:
            db1 += dh.sum(0)
        if dx is not None:
            torch.mm(dh, w1, out=dx[rows])
    db2 = g2.sum(0) if ctx.has_bias[1] else None
    return (None if dx is None else dx.view(x.shape)), dw1, db1, dw2, db2


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


def _taps(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(C, 1, k) weight -> (k, C) contiguous rows: a broadcast of a strided column is several times slower."""
    return weight[:, 0].t().to(dtype).contiguous()


def _conv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The convolution with taps ``w`` (k, C) (tap j looks back k-1-j steps), in x's dtype."""
    k, L = w.shape[0], x.shape[1]
    y = torch.addcmul(bias.to(x.dtype), x, w[k - 1]) if bias is not None else x * w[k - 1]
    for j in range(k - 1):
        s = k - 1 - j
        if s < L:
            y[:, s:].addcmul_(x[:, : L - s], w[j])
    return y


class _CausalDepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu):
        y = _conv(x, _taps(weight, x.dtype), bias)
        ctx.save_for_backward(x, weight, bias)
        ctx.silu = silu
        return F.silu(y, inplace=True) if silu else y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias = ctx.saved_tensors
        return (*causal_depthwise_conv_backward(x, weight, bias, dy, ctx.silu), None)


def causal_depthwise_conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`causal_depthwise_conv` (without activation) outside autograd, for callers that recompute it."""
    return _conv(x, _taps(weight, x.dtype), bias)


def causal_depthwise_conv_backward(x, weight, bias, dy, silu: bool = False):
    """Gradients ``(dx, dweight, dbias)`` of :func:`causal_depthwise_conv` at ``(x, weight, bias)`` for ``dy``."""
    w = _taps(weight, x.dtype)
    if silu:  # d silu(p)/dp = s (1 + p (1 - s)), s = sigmoid(p), with p the recomputed pre-activation
        dy = torch.ops.aten.silu_backward(dy, _conv(x, w, bias))
    k, L = w.shape[0], x.shape[1]
    dx = dy * w[k - 1]
    dw = torch.empty_like(w)
    prod = torch.empty_like(x)  # per-tap products, summed over (batch, time) per channel
    dw[k - 1] = torch.mul(dy, x, out=prod).sum(dim=(0, 1))
    for j in range(k - 1):
        s = k - 1 - j
        if s < L:
            dx[:, : L - s].addcmul_(dy[:, s:], w[j])
            dw[j] = torch.mul(dy[:, s:], x[:, : L - s], out=prod[:, : L - s]).sum(dim=(0, 1))
        else:
            dw[j] = 0
    dbias = dy.sum(dim=(0, 1)).to(bias.dtype) if bias is not None else None
    return dx, dw.t().to(weight.dtype)[:, None], dbias


def recompute(fn, x: torch.Tensor, params) -> torch.Tensor:
    """``fn(x)`` without keeping its activations: they are recomputed in the backward (activation
    checkpointing). ``params`` are the tensors ``fn`` reads besides ``x`` that need gradients (a module's
    parameters); their gradients flow back through the outer autograd graph like any other, so hooks and
    gradient accumulation behave as without checkpointing.

    A small ``autograd.Function`` rather than ``torch.utils.checkpoint``, whose first use costs ~150 MB of
    resident memory (the machinery it imports), more than the activations of a short window. The RNG state
    is replayed for the recomputation (dropout masks match) and autocast is re-entered as it was.

    Parameters partitioned by DeepSpeed ZeRO-3 (they carry a ``ds_id``) change shape between the engine's
    gather and release hooks, which that Function's explicit parameter gradients cannot follow: such calls go
    through ``torch.utils.checkpoint`` (non-reentrant), which the engine's hooks support.
    """
    params = [p for p in params if p.requires_grad]
    if any(hasattr(p, "ds_id") for p in params):
        from torch.utils.checkpoint import checkpoint

        return checkpoint(fn, x, use_reentrant=False)
    return _Recompute.apply(fn, x, len(params), *params)


class _Recompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, x, n_params, *params):
        ctx.fn, ctx.params = fn, params
        ctx.cpu_rng = torch.get_rng_state()
        ctx.cuda_rng = torch.cuda.get_rng_state(x.device) if x.is_cuda else None
        device_type = x.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        ctx.save_for_backward(x)
        with torch.no_grad():
            return fn(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        params = ctx.params
        x_in = x.detach().requires_grad_(ctx.needs_input_grad[1])
        device_type, enabled, dtype = ctx.autocast
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(x.device) if ctx.cuda_rng is not None else None
        try:
            torch.set_rng_state(ctx.cpu_rng)
            if cuda_state is not None:
                torch.cuda.set_rng_state(ctx.cuda_rng, x.device)
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                y = ctx.fn(x_in)
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, x.device)
        inputs = ([x_in] if x_in.requires_grad else []) + list(params)
        grads = list(torch.autograd.grad(y, inputs, grad, allow_unused=True)) if inputs else []
        dx = grads.pop(0) if x_in.requires_grad else None
        return (None, dx, None, *grads)

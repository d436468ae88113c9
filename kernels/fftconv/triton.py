"""Triton FFT convolution as ``torch.library`` custom ops (``longdna::fftconv`` and its backward).

The ops are registered with fake (meta) implementations and an autograd formula, so ``torch.compile``
traces through them as opaque nodes and ``torch.library.opcheck`` can verify them. Kernels and plans live
in ``triton_plan`` / ``triton_fft`` / ``triton_fused`` / ``triton_passes``; launchers in ``triton_launch``.
"""

from __future__ import annotations

import torch

from kernels.fftconv.ref import check_inputs
from kernels.fftconv.triton_launch import fftconv_bwd, fftconv_fwd


@torch.library.custom_op("longdna::fftconv", mutates_args=())
def fftconv_op(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y = causal_conv(u, k) + bias·u on unit-L-stride tensors (see :func:`fftconv_triton`)."""
    return fftconv_fwd(u, k, bias)


@fftconv_op.register_fake
def _(u, k, bias):
    return torch.empty_like(u, memory_format=torch.contiguous_format)


@torch.library.custom_op("longdna::fftconv_backward", mutates_args=())
def fftconv_backward_op(
    grad: torch.Tensor, u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du, dk, dbias) of :func:`fftconv_op` for the output gradient ``grad``."""
    return fftconv_bwd(_unit_stride(grad), u, k, bias)


@fftconv_backward_op.register_fake
def _(grad, u, k, bias):
    return (torch.empty_like(u, memory_format=torch.contiguous_format), torch.empty_like(k),
            torch.empty_like(bias))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    u, k, bias = ctx.saved_tensors
    return fftconv_backward_op(grad, u, k, bias)


fftconv_op.register_autograd(_backward, setup_context=_setup_context)


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    """The kernels index the last axis with unit stride; copy only when it is not."""
    return t if t.stride(-1) == 1 else t.contiguous()


def fftconv_triton(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal convolution of u (B, D, L) with k (D, L) plus bias (D,)·u, by the Triton four-step FFT.

    Any L from 1 to 2^23. Computes in fp32 (fp64 if an input is float64) from fp32/bf16/fp16 inputs;
    y has u's dtype. Differentiable in u, k and bias. On CPU tensors it needs ``TRITON_INTERPRET=1``.
    """
    check_inputs(u, k, bias)
    return fftconv_op(_unit_stride(u), _unit_stride(k), bias.contiguous())

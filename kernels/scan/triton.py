"""Triton selective scan as ``torch.library`` custom ops (``longdna::selective_scan`` and its backward).

The forward op returns (out, last_state, checkpoints); the checkpoints — the state every CHUNK·SEGMENT
steps, B·D·N·L/2048 values — are what the backward restarts from. Fake implementations and the autograd
formula are registered so ``torch.compile`` and ``torch.library.opcheck`` work. The gradient of
``last_state`` is supported (sequence parallelism chains scans through it), as is ``initial_state``'s.
"""

from __future__ import annotations

from typing import Optional

import torch

from kernels.scan.ref import check_inputs
from kernels.scan.triton_launch import CHUNK, SEGMENT, BCView, compute_dtype, geometry, scan_bwd, scan_fwd

Tensor = torch.Tensor


@torch.library.custom_op("longdna::selective_scan", mutates_args=())
def selective_scan_op(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor], z: Optional[Tensor],
    delta_bias: Optional[Tensor], initial_state: Optional[Tensor], delta_softplus: bool, chunk: int, segment: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, checkpoints) on validated tensors (see :func:`selective_scan_triton`)."""
    return scan_fwd(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk, segment)


@selective_scan_op.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, chunk, segment):
    g = geometry(u, A, BCView.of(B, u.shape[1]), BCView.of(C, u.shape[1]), chunk, segment)
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    return (torch.empty_like(u), u.new_empty(g.batch, g.dim, g.nstate, dtype=acc),
            u.new_empty(g.batch, g.dim, g.nseg, g.NP, dtype=acc))


@torch.library.custom_op("longdna::selective_scan_backward", mutates_args=())
def selective_scan_backward_op(
    dout: Tensor, dlast: Optional[Tensor], u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Optional[Tensor], z: Optional[Tensor], delta_bias: Optional[Tensor], ckpt: Tensor, delta_softplus: bool,
    chunk: int, segment: int,
) -> list[Tensor]:
    """[du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0]; an absent input's gradient is an empty tensor."""
    grads = scan_bwd(dout.contiguous(), dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus,
                     chunk, segment)
    return [g if g is not None else u.new_empty(0) for g in grads]


@selective_scan_backward_op.register_fake
def _(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, delta_softplus, chunk, segment):
    like = (u, delta, A, B, C, D, z, delta_bias)
    grads = [torch.empty_like(t) if t is not None else u.new_empty(0) for t in like]
    return grads + [u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=ckpt.dtype)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, h0, softplus, chunk, segment = inputs
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])
    ctx.static = (softplus, chunk, segment, h0.dtype if h0 is not None else None)


def _backward(ctx, dout, dlast, _dckpt):
    u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
    softplus, chunk, segment, h0_dtype = ctx.static
    if dout is None:
        dout = torch.zeros_like(u)
    grads = selective_scan_backward_op(dout, dlast, u, delta, A, B, C, D, z, delta_bias, ckpt, softplus,
                                       chunk, segment)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    out = [g if t is not None else None for g, t in zip(grads, inputs)]
    return (*out, grads[8].to(h0_dtype) if h0_dtype is not None else None, None, None, None)


selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False, initial_state=None, chunk: int = CHUNK, segment: int = SEGMENT):
    """Mamba-1 selective scan by the Triton kernels; arguments, layouts and results as
    :func:`kernels.selective_scan`. ``chunk`` (a power of two) and ``segment`` set the time steps per
    register tile and the chunks between state checkpoints. On CPU tensors it needs ``TRITON_INTERPRET=1``."""
    check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk < 1 or chunk & (chunk - 1) or segment < 1:
        raise ValueError(f"selective_scan: chunk must be a power of two and segment >= 1, got {chunk}, {segment}")

    def lay(t):  # unit stride along time (and along D for the (D,) vectors); (D, N) tensors go by strides
        return t.contiguous() if t is not None and t.dim() != 2 else t

    out, last, _ = selective_scan_op(lay(u), lay(delta), A, lay(B), lay(C), lay(D), lay(z), lay(delta_bias),
                                     initial_state, delta_softplus, chunk, segment)
    return (out, last) if return_last_state else out

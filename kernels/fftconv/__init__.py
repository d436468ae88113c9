"""``kernels.fftconv``: causal long convolution by FFT (DESIGN §6).

Layers: ``ref.py`` (torch reference, memory-bounded), ``triton.py`` (fused Triton kernel), and the public
function below, which dispatches with :func:`kernels.dispatch.resolve_impl`.
"""

from __future__ import annotations

import torch

from kernels.dispatch import resolve_impl


def fftconv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Causal convolution of ``u`` (B, D, L) with per-channel filters ``k`` (D, L), plus ``bias * u``.

    ``y[b, d, t] = sum_{s<=t} k[d, s] * u[b, d, t-s] + bias[d] * u[b, d, t]``, evaluated by FFT of size 2L in
    fp32 or wider (half precision is upcast, float64 stays float64); ``y`` has ``u``'s dtype.
    ``impl``: ``"auto"`` | ``"triton"`` | ``"torch"`` (default: the process-wide setting, see
    :mod:`kernels.dispatch`).
    """
    if resolve_impl("fftconv", impl, u) == "triton":
        from kernels.fftconv.triton import fftconv_triton

        return fftconv_triton(u, k, bias)
    from kernels.fftconv.ref import fftconv_ref

    return fftconv_ref(u, k, bias)

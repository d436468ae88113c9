"""``kernels.selective_scan``: Mamba-1 selective scan with mamba_ssm's layouts (DESIGN §6).

Layers: ``ref.py`` (chunked torch reference with an explicit backward), ``triton.py`` (Triton kernel), and
the public function below, which dispatches with :func:`kernels.dispatch.resolve_impl`.
"""

from __future__ import annotations

import torch

from kernels.dispatch import resolve_impl


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    impl: str | None = None,
):
    """Selective scan ``h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t``, ``y_t = C_t h_t (+ D u_t)``, gated by ``silu(z)``.

    Shapes (mamba_ssm): u, delta, z: (B, D, L); A: (D, N); B, C: (D, N) shared, (B, N, L) per batch or
    (B, G, N, L) grouped (channel d uses group d // (D/G)); D, delta_bias: (D,); initial_state and the last
    state: (B, D, N). Returns ``out`` (B, D, L), or ``(out, last_state)`` with ``return_last_state=True``.
    ``impl``: ``"auto"`` | ``"triton"`` | ``"torch"`` (default: the process-wide setting).
    """
    kwargs = dict(
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
        initial_state=initial_state,
    )
    if resolve_impl("scan", impl, u) == "triton":
        from kernels.scan.triton import selective_scan_triton

        return selective_scan_triton(u, delta, A, B, C, **kwargs)
    from kernels.scan.ref import selective_scan_ref

    return selective_scan_ref(u, delta, A, B, C, **kwargs)

"""Which implementation a public kernel function runs: ``"torch"`` (the reference) or ``"triton"``.

``impl="auto"`` (the default) picks Triton for CUDA tensors when Triton is importable and the torch
reference everywhere else. ``impl="triton"`` forces the Triton kernel, also on CPU tensors, which needs the
Triton interpreter (``TRITON_INTERPRET=1`` in the environment before triton is imported). The process-wide
default of each op is set from the training config (``kernels.fftconv`` / ``kernels.scan``) with
:func:`set_default_impl`.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

IMPLS = ("auto", "triton", "torch")
OPS = ("fftconv", "scan")
_defaults = {op: "auto" for op in OPS}


def set_default_impl(op: str, impl: str) -> None:
    """Set the implementation ``op`` (``"fftconv"`` or ``"scan"``) uses when a call passes no ``impl``."""
    if op not in OPS:
        raise ValueError(f"unknown kernel op {op!r}; expected one of {OPS}")
    _defaults[op] = _check_impl(impl)


def get_default_impl(op: str) -> str:
    return _defaults[op]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package is importable (it is not on every platform)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_impl(op: str, impl: str | None, like: torch.Tensor) -> str:
    """The concrete implementation (``"torch"`` or ``"triton"``) for a call on tensors like ``like``."""
    impl = _check_impl(impl if impl is not None else _defaults[op])
    if impl == "auto":
        return "triton" if like.is_cuda and triton_available() else "torch"
    if impl == "triton":
        if not triton_available():
            raise ValueError(f"{op}: impl='triton' was requested but triton is not installed; use impl='torch'")
        if not like.is_cuda and not triton_interpreted():
            raise ValueError(
                f"{op}: impl='triton' on {like.device} tensors needs the Triton interpreter: set "
                "TRITON_INTERPRET=1 in the environment before starting Python, or use impl='torch'"
            )
    return impl


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"kernel impl must be one of {IMPLS}, got {impl!r}")
    return impl

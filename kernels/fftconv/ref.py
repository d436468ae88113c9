"""Torch reference of the FFT long convolution used by Hyena, memory-bounded, with an explicit backward.

Definition (HyenaDNA's ``fftconv_ref`` without dropout/GELU)::

    y[b, d, t] = sum_{s=0..t} k[d, s] * u[b, d, t-s] + bias[d] * u[b, d, t]

evaluated as ``irfft(rfft(u, 2L) * rfft(k, 2L), 2L)[..., :L]``: zero padding to 2L makes the circular
convolution an exact causal linear one. Gradients are circular *correlations* of the same size:
``du = irfft(rfft(dy) * conj(rfft(k)))[:L] + bias * dy`` and ``dk = irfft(sum_b rfft(dy) * conj(rfft(u)))[:L]``
(the zero padding again removes every wrapped-around term).

Memory: channels are processed in groups small enough that one group's spectra stay near
``SPECTRUM_BUDGET`` complex numbers; nothing but u, k and bias is saved for the backward, which recomputes the
spectra group by group. Peak memory is O(B·D·L) (the output and input) plus O(B·L) per channel group, so
L = 2^20 fits on a laptop.

Computation is in float32 or wider (half precision is upcast, float64 stays float64); ``y`` has ``u``'s dtype
and each gradient the dtype of its input.
"""

from __future__ import annotations

import torch

SPECTRUM_BUDGET = 1 << 23  # complex elements per channel group (64 MiB in complex64)


def fftconv_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Causal convolution of ``u`` (B, D, L) with per-channel filters ``k`` (D, L), plus ``bias`` (D,) * ``u``.

    Differentiable in ``u``, ``k`` and ``bias``; see the module docstring for the definition and memory use.
    """
    check_inputs(u, k, bias)
    return _FFTConvFn.apply(u, k, bias)


def check_inputs(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> None:
    """Raise ``ValueError`` with what to change if the shapes, dtypes or devices do not fit fftconv."""
    if u.dim() != 3:
        raise ValueError(f"fftconv: u must be (B, D, L), got shape {tuple(u.shape)}")
    _, dim, length = u.shape
    if length < 1:
        raise ValueError("fftconv: the sequence length L must be >= 1")
    if tuple(k.shape) != (dim, length):
        raise ValueError(f"fftconv: k must be (D, L) = ({dim}, {length}) to match u, got {tuple(k.shape)}")
    if tuple(bias.shape) != (dim,):
        raise ValueError(f"fftconv: bias must be (D,) = ({dim},), got {tuple(bias.shape)}")
    for name, t in (("u", u), ("k", k), ("bias", bias)):
        if not t.is_floating_point():
            raise ValueError(f"fftconv: {name} must be floating point, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"fftconv: {name} is on {t.device} but u is on {u.device}; move them to one device")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _channel_groups(batch: int, dim: int, length: int):
    """Channel ranges whose spectra (B x group x (L+1) complex numbers) fit ``SPECTRUM_BUDGET``."""
    step = max(1, SPECTRUM_BUDGET // (batch * (length + 1)))
    return [(c0, min(c0 + step, dim)) for c0 in range(0, dim, step)]


def _rfft_padded(x: torch.Tensor, n: int, buf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``rfft(x, n)`` (x zero-padded to n along the last axis) through a reusable buffer whose tail stays zero:
    torch's own padding allocates, zero-fills and copies at every call. Returns (spectrum, buffer)."""
    length = x.shape[-1]
    if buf is None or buf.shape[:-1] != x.shape[:-1]:
        buf = x.new_empty(*x.shape[:-1], n)
        buf[..., length:].zero_()
    buf[..., :length].copy_(x)
    return torch.fft.rfft(buf), buf


def _irfft_first(spec: torch.Tensor, n: int, length: int) -> torch.Tensor:
    return torch.fft.irfft(spec, n=n)[..., :length]


class _FFTConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, k, bias):
        batch, dim, length = u.shape
        dt, n = _compute_dtype(u, k, bias), 2 * length
        y = torch.empty_like(u)  # u's layout: a transposed (B, L, D) view stays one
        ubuf = kbuf = None
        for c0, c1 in _channel_groups(batch, dim, length):
            uc = u[:, c0:c1]
            uf, ubuf = _rfft_padded(uc.to(dt), n, ubuf)
            kf, kbuf = _rfft_padded(k[c0:c1].to(dt), n, kbuf)
            yc = _irfft_first(uf.mul_(kf), n, length)
            y[:, c0:c1] = yc.addcmul_(bias[c0:c1, None].to(dt), uc)
        ctx.save_for_backward(u, k, bias)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        return fftconv_backward_ref(*ctx.saved_tensors, dy)


def fftconv_backward_ref(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, dy: torch.Tensor):
    """Gradients ``(du, dk, dbias)`` of :func:`fftconv_ref` at ``(u, k, bias)`` for the output gradient ``dy``
    (for callers that keep u, k, bias in their own autograd Function and recompute u there)."""
    batch, dim, length = u.shape
    dt, n = _compute_dtype(u, k, bias), 2 * length
    du, dk = torch.empty_like(u), torch.empty_like(k)
    dbias = torch.empty(dim, dtype=dt, device=u.device)
    bbuf = kbuf = None
    for c0, c1 in _channel_groups(batch, dim, length):
        uc, gc = u[:, c0:c1].to(dt), dy[:, c0:c1].to(dt)
        gf, bbuf = _rfft_padded(gc, n, bbuf)
        kf, kbuf = _rfft_padded(k[c0:c1].to(dt), n, kbuf)
        du_c = _irfft_first(gf * kf.conj_physical_(), n, length)  # correlation with k
        du[:, c0:c1] = du_c.addcmul_(bias[c0:c1, None].to(dt), gc)
        dbias[c0:c1] = (gc * uc).sum(dim=(0, 2))
        uf, bbuf = _rfft_padded(uc, n, bbuf)
        dk_f = uf.conj_physical_().mul_(gf)  # correlation with u, summed over the batch
        dk[c0:c1] = _irfft_first(dk_f[0] if batch == 1 else dk_f.sum(dim=0), n, length)
    return du, dk, dbias.to(bias.dtype)

"""FFT plans and constant tables for the Triton FFT convolution.

A causal linear convolution of length L is exact with any FFT size N >= 2L - 1; we take N = the power of
two >= 2L (at least 256), so every L from 1 to 2^23 has a plan. The transform is a four-step (Monarch)
decomposition whose factors are DFT matrices applied with ``tl.dot``:

* on chip (N <= ``max_row``, 2048 by default): one program holds a whole sequence as a [P, Q] tile,
  N = P·Q with P, Q in 16..64, and runs the fused kernel (load u, DFT, product with the filter spectrum,
  inverse DFT, + bias·u, store) — u and y cross memory once.
* longer: N = N1·M (M <= ``max_row``). A *column pass* does DFTs of size N1 over the strided index
  (N1 <= 64 as one dense DFT matrix, N1 >= 256 as a second four-step R1·R2 on chip), a *row pass* does
  the twiddle, the size-M DFT on chip, the product, the inverse size-M DFT and the conjugate twiddle, and
  an inverse column pass returns to time, truncates to L and adds bias·u. Three passes over an fp32
  complex work buffer.

Tables (DFT matrices, twiddles) are computed in float64 on the host, cast to the compute dtype, and cached
per (device, dtype); the kernels read them from L2. ``W_S = exp(-2πi/S)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MIN_N = 256  # smallest FFT: a 16 x 16 tile (tl.dot needs every dimension >= 16)
MAX_TILE = 4096  # largest FFT one program can hold (64 x 64)
# Default on-chip limit: compiled for sm_90 at 8 warps, the 32 x 64 tiles need no register spills while
# 64 x 64 tiles spill 1.5-3.7 KB per thread (the kernel compile test checks this).
MAX_ROW = 2048
COL_TILE = 8192  # complex values per column-pass tile (N1 x T); 16384 spills
MAX_N = 1 << 24  # N1 <= 4096 and M <= 4096


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _split(n: int) -> tuple[int, int]:
    """n (a power of two) = a · b with a <= b, both as close to sqrt(n) as powers of two allow."""
    a = 1 << (n.bit_length() - 1) // 2
    return a, n // a


@dataclass(frozen=True)
class FFTPlan:
    """How a length-L convolution is transformed: FFT size N = N1 · P · Q.

    ``N1 == 1``: on chip, one [P, Q] tile per sequence. Otherwise the column DFT has size N1 = R1·R2
    (R2 == 1: one dense DFT) over n1 (stride M = P·Q), T columns per program; the row DFT has size M.
    """

    L: int
    N: int
    P: int
    Q: int
    N1: int = 1
    R1: int = 1
    R2: int = 1
    T: int = 1

    @property
    def M(self) -> int:
        return self.P * self.Q

    @property
    def onchip(self) -> bool:
        return self.N1 == 1


def make_plan(L: int, max_row: int = MAX_ROW) -> FFTPlan:
    """The FFT plan for sequences of length ``L`` (``max_row``: largest on-chip FFT, a power of two >= 256)."""
    if L < 1:
        raise ValueError(f"fftconv: the sequence length must be >= 1, got {L}")
    if max_row < MIN_N or max_row & (max_row - 1) or max_row > MAX_TILE:
        raise ValueError(f"fftconv: max_row must be a power of two in [{MIN_N}, {MAX_TILE}], got {max_row}")
    N = max(MIN_N, next_pow2(2 * L))
    if N > MAX_N:
        raise ValueError(f"fftconv: L={L} is too long for the Triton kernel (at most {MAX_N // 2}); use impl='torch'")
    if N <= max_row:
        return FFTPlan(L, N, *_split(N))
    # column sizes a column program can do: one dense DFT (16..64) or a four-step of two such (256..4096)
    cands = [c for c in (16, 32, 64, 256, 512, 1024, 2048, 4096) if MIN_N <= N // c <= MAX_TILE]
    fitting = [c for c in cands if N // c <= max_row]
    N1 = fitting[0] if fitting else cands[-1]
    R1, R2 = (N1, 1) if N1 <= 64 else _split(N1)
    # columns per program: N1·T <= COL_TILE; a dense column DFT needs T >= 16 (a tl.dot dimension)
    T = max(16 if R2 == 1 else 8, min(64, COL_TILE // N1))
    return FFTPlan(L, N, *_split(N // N1), N1=N1, R1=R1, R2=R2, T=T)


_cache: dict = {}


def _cached(key, build):
    if key not in _cache:
        _cache[key] = build()
    return _cache[key]


def _roots(exponent: torch.Tensor, size: int, dtype, device) -> torch.Tensor:
    """(2, *shape) real and imaginary parts of W_size^exponent, exact integer reduction mod size first."""
    ang = (exponent % size).to(torch.float64) * (-2.0 * math.pi / size)
    return torch.stack([torch.cos(ang), torch.sin(ang)]).to(device=device, dtype=dtype).contiguous()


def dft_matrix(R: int, dtype, device) -> torch.Tensor:
    """(2, R, R): F[j, k] = W_R^{jk} (symmetric)."""
    j = torch.arange(R, dtype=torch.int64)
    return _cached(("dft", R, dtype, device), lambda: _roots(j[:, None] * j[None, :], R, dtype, device))


def twiddle_tile(S: int, A: int, B: int, dtype, device) -> torch.Tensor:
    """(2, A, B): W_S^{a·b}, the twiddles between the two steps of a size-S = A·B four-step."""
    a, b = torch.arange(A, dtype=torch.int64), torch.arange(B, dtype=torch.int64)
    return _cached(("tw", S, A, B, dtype, device), lambda: _roots(a[:, None] * b[None, :], S, dtype, device))


def twiddle_split(N: int) -> int:
    """Bits of the low table of the two-level twiddle W_N^e = W_N^{(e >> s) << s} · W_N^{e & (2^s - 1)}."""
    return (N.bit_length() - 1 + 1) // 2


def twiddle_levels(N: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The two tables of the two-level twiddle for size N: lo (2, 2^s) and hi (2, N >> s)."""
    s = twiddle_split(N)

    def build():
        lo = _roots(torch.arange(1 << s, dtype=torch.int64), N, dtype, device)
        hi = _roots(torch.arange(N >> s, dtype=torch.int64) << s, N, dtype, device)
        return lo, hi

    return _cached(("tw2", N, dtype, device), build)

"""Kernels: FFT long convolution and selective scan (DESIGN §6).

Each op has a documented torch reference, a Triton implementation, and one public function that dispatches
(Triton on CUDA, the reference elsewhere; ``impl=`` or :func:`set_default_impl` override). Imports nothing
else of this project.
"""

from kernels.dispatch import get_default_impl, set_default_impl, triton_available
from kernels.fftconv import fftconv
from kernels.scan import selective_scan

__all__ = ["fftconv", "selective_scan", "set_default_impl", "get_default_impl", "triton_available"]

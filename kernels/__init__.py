"""Kernels: FFT long convolution and selective scan, each a torch reference + Triton, behind one function."""

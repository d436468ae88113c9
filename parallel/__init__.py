"""Parallel layout and wrapping (see DESIGN §1, §7): :class:`ParallelDims` owns the process groups."""

from parallel.dims import ParallelDims

__all__ = ["ParallelDims"]

"""Parallel layout and wrapping (see DESIGN §1, §7).

- :class:`ParallelDims` owns the data x sequence-parallel layout and its process groups.
- :func:`apply_sequence_parallel` makes a model sequence parallel from outside (``parallel.mixers``), built on
  the autograd collectives of :mod:`parallel.collectives`; :func:`count_bytes` counts what they send.
- :class:`SequenceDataParallelMPU` hands the layout to DeepSpeed (ZeRO over all dp x sp ranks).
"""

from parallel.collectives import (CommCounter, all_gather_stack, channel_to_seq, count_bytes, halo_exchange,
                                  seq_to_channel)
from parallel.dims import ParallelDims
from parallel.mpu import SequenceDataParallelMPU
from parallel.sequence import (apply_sequence_parallel, check_sequence_parallel, gather_sequence, halo_width,
                               shard_sequence)

__all__ = [
    "ParallelDims", "apply_sequence_parallel", "check_sequence_parallel", "shard_sequence", "gather_sequence",
    "halo_width", "SequenceDataParallelMPU", "count_bytes", "CommCounter", "seq_to_channel", "channel_to_seq",
    "halo_exchange", "all_gather_stack",
]

"""Parallel layout and wrapping (see DESIGN §1, §7).

- :class:`ParallelDims` owns the data x sequence x tensor-parallel layout and its process groups.
- :func:`apply_sequence_parallel` makes a model sequence parallel from outside (``parallel.mixers``), built on
  the autograd collectives of :mod:`parallel.collectives`; :func:`count_bytes` counts what they send.
- :func:`apply_tensor_parallel` splits the blocks' layers over a tensor-parallel group (megatron-core's
  Column/RowParallelLinear, imported on first use); :func:`gather_tensor_parallel_state_dict` joins the shards
  (:func:`merge_tensor_parallel_state_dicts` offline, from saved per-rank state dicts).
- :class:`SequenceDataParallelMPU` hands the layout to DeepSpeed (ZeRO over all dp x sp ranks).
"""

from parallel.collectives import (CommCounter, all_gather_stack, channel_to_seq, count_bytes, halo_exchange,
                                  seq_to_channel)
from parallel.dims import ParallelDims
from parallel.mpu import SequenceDataParallelMPU
from parallel.sequence import (apply_sequence_parallel, check_sequence_parallel, gather_sequence, halo_width,
                               shard_sequence)
from parallel.tensor import (apply_tensor_parallel, check_tensor_parallel, gather_tensor_parallel,
                             gather_tensor_parallel_state_dict, merge_shards, merge_tensor_parallel_state_dicts,
                             shard_tensor, tensor_parallel_spec, tensor_parallel_specs)

__all__ = [
    "ParallelDims", "apply_sequence_parallel", "check_sequence_parallel", "shard_sequence", "gather_sequence",
    "halo_width", "SequenceDataParallelMPU", "count_bytes", "CommCounter", "seq_to_channel", "channel_to_seq",
    "halo_exchange", "all_gather_stack", "apply_tensor_parallel", "check_tensor_parallel", "gather_tensor_parallel",
    "gather_tensor_parallel_state_dict", "merge_shards", "merge_tensor_parallel_state_dicts", "shard_tensor",
    "tensor_parallel_spec", "tensor_parallel_specs",
]

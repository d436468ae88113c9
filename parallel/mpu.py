"""The ``mpu`` object that tells DeepSpeed about a data x sequence x tensor-parallel layout.

DeepSpeed reads its process groups from an ``mpu`` passed to ``deepspeed.initialize``. With this one:

- ZeRO (stages 1 and 2) partitions gradients and optimizer state over the **sequence-data-parallel** group, the
  ``dp * sp`` ranks that hold the same tensor-parallel shard, so the ranks of one SP group do not each hold a
  full optimizer state (stage 3 is refused with SP: DeepSpeed would partition its parameters over the
  data-parallel group only);
- gradients are reduced over that same group and divided by ``dp`` (DeepSpeed divides by
  ``seq_dp_world_size / sp``): each rank's gradient is its share of the group's summed loss, so summing over the
  SP ranks and averaging over the DP ranks gives the single-process gradient of the mean loss;
- batch sizes count data-parallel replicas only (``train_batch_size = micro_batch * accumulation * dp``);
- the model-parallel group is the tensor-parallel group (this rank alone without TP): ZeRO's gradient norm sums
  the squares of the tensor-parallel shards (parameters carrying megatron's ``tensor_model_parallel``) over it
  and counts replicated parameters once (those of TP rank 0), which is the norm of the whole model's gradient;
  checkpoints are written per model-parallel rank (``mp_rank_XX_model_states.pt``).
"""

from __future__ import annotations

import torch.distributed as dist

from parallel.dims import ParallelDims


class SequenceDataParallelMPU:
    """DeepSpeed ``mpu`` for ``dims`` (built). Pass it as ``deepspeed.initialize(..., mpu=...)`` when ``sp > 1``."""

    def __init__(self, dims: ParallelDims):
        if dims.rank is None:
            raise ValueError("SequenceDataParallelMPU needs a built ParallelDims (call dims.build() first)")
        self.dims = dims
        if dims.tp > 1:
            self._model_parallel_group = dims.tp_group
        else:  # only this rank joins its own group: no collective over the other ranks is needed to create it
            self._model_parallel_group = dist.new_group([dims.rank], use_local_synchronization=True)

    # sequence parallel
    def get_sequence_parallel_group(self):
        return self.dims.sp_group

    def get_sequence_parallel_world_size(self) -> int:
        return self.dims.sp

    def get_sequence_parallel_rank(self) -> int:
        return self.dims.sp_rank

    # sequence x data parallel: every rank with this rank's tensor-parallel shard (the world without TP)
    def get_sequence_data_parallel_group(self):
        return self.dims.dp_sp_group

    def get_sequence_data_parallel_world_size(self) -> int:
        return self.dims.dp * self.dims.sp

    def get_sequence_data_parallel_rank(self) -> int:
        return self.dims.dp_rank * self.dims.sp + self.dims.sp_rank

    # data parallel replicas (DeepSpeed's batch arithmetic counts these, not SP ranks). ZeRO-3 would partition
    # its parameters over this group (zero.Init) but reduce over the sequence-data-parallel one, which does not
    # give the single-process gradient: the training config refuses ZeRO-3 with SP (pretrain.config). Without SP the
    # two groups are the same ranks (those holding this rank's TP shard), so ZeRO-3 with TP partitions correctly.
    def get_data_parallel_group(self):
        return self.dims.dp_group

    def get_data_parallel_world_size(self) -> int:
        return self.dims.dp

    def get_data_parallel_rank(self) -> int:
        return self.dims.dp_rank

    def get_data_parallel_group_ranks(self) -> list[int]:
        return self.dims.dp_group_ranks()[self.dims.sp_rank * self.dims.tp + self.dims.tp_rank]

    # model parallelism: tensor parallelism only
    def get_model_parallel_group(self):
        return self._model_parallel_group

    def get_model_parallel_world_size(self) -> int:
        return self.dims.tp

    def get_model_parallel_rank(self) -> int:
        return self.dims.tp_rank

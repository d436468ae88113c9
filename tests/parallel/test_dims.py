"""ParallelDims: layout arithmetic, validation, and real process groups on gloo (4 processes)."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from parallel import ParallelDims


def test_layout_puts_sequence_parallel_innermost():
    dims = ParallelDims(dp=2, sp=3)
    assert dims.sp_group_ranks() == [[0, 1, 2], [3, 4, 5]]
    assert dims.dp_group_ranks() == [[0, 3], [1, 4], [2, 5]]
    assert [dims.dp_rank_of(r) for r in range(6)] == [0, 0, 0, 1, 1, 1]
    assert [dims.sp_rank_of(r) for r in range(6)] == [0, 1, 2, 0, 1, 2]


def test_bad_degrees_are_value_errors():
    with pytest.raises(ValueError, match="positive integer"):
        ParallelDims(dp=0)
    with pytest.raises(ValueError, match="multiply to the number of processes"):
        ParallelDims(dp=2, sp=2).validate(world_size=2)
    with pytest.raises(ValueError, match="does not divide the world size 6"):
        ParallelDims.from_world(6, sp=4)
    assert ParallelDims.from_world(8, sp=2) == ParallelDims(dp=4, sp=2)
    with pytest.raises(ValueError, match="call build"):
        ParallelDims(dp=1).dp_rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world_size, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        dims = ParallelDims(dp=2, sp=2).build()
        x = torch.tensor([float(rank)])
        sp_sum = x.clone()
        dist.all_reduce(sp_sum, group=dims.sp_group)
        dp_sum = x.clone()
        dist.all_reduce(dp_sum, group=dims.dp_group)
        results[rank] = (dims.dp_rank, dims.sp_rank, sp_sum.item(), dp_sum.item())
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_groups_reduce_over_the_right_ranks():
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(4, _free_port(), results), nprocs=4, join=True)
    # sp groups {0,1},{2,3}; dp groups {0,2},{1,3}
    assert dict(results) == {
        0: (0, 0, 1.0, 2.0),
        1: (0, 1, 1.0, 4.0),
        2: (1, 0, 5.0, 2.0),
        3: (1, 1, 5.0, 4.0),
    }


def test_build_refuses_without_process_group():
    if dist.is_initialized():
        pytest.skip("a default process group exists in this process")
    with pytest.raises(ValueError, match="initialised first"):
        ParallelDims(dp=1).build()


# ---------------------------------------------------------------------------------------------------------
# tensor parallelism: TP innermost, then SP, then DP


def test_layout_puts_tensor_parallel_innermost():
    dims = ParallelDims(dp=2, sp=2, tp=2)
    assert dims.tp_group_ranks() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dims.sp_group_ranks() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert dims.dp_group_ranks() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert dims.dp_sp_group_ranks() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert [dims.tp_rank_of(r) for r in range(8)] == [0, 1] * 4
    assert [dims.sp_rank_of(r) for r in range(8)] == [0, 0, 1, 1] * 2
    assert [dims.dp_rank_of(r) for r in range(8)] == [0] * 4 + [1] * 4
    # every rank sits in exactly one group of each kind, and (dp, sp, tp) ranks name it uniquely
    coords = {(dims.dp_rank_of(r), dims.sp_rank_of(r), dims.tp_rank_of(r)) for r in range(8)}
    assert len(coords) == 8
    one = ParallelDims(dp=3, sp=2)  # tp = 1: the data x sequence layout unchanged
    assert one.sp_group_ranks() == [[0, 1], [2, 3], [4, 5]] and one.tp_group_ranks() == [[r] for r in range(6)]


def test_bad_tensor_parallel_degrees_are_value_errors():
    with pytest.raises(ValueError, match="ParallelDims.tp must be a positive integer"):
        ParallelDims(dp=1, tp=0)
    with pytest.raises(ValueError, match=r"dp=1 x sp=2 x tp=2 = 4 processes, but the world has 8"):
        ParallelDims(dp=1, sp=2, tp=2).validate(world_size=8)
    with pytest.raises(ValueError, match="parallel.tensor=4 does not divide the world size 6"):
        ParallelDims.from_world(6, tp=4)
    with pytest.raises(ValueError, match=r"parallel.sequence=2 x parallel.tensor=2 does not divide the world size 6"):
        ParallelDims.from_world(6, sp=2, tp=2)
    assert ParallelDims.from_world(8, sp=2, tp=2) == ParallelDims(dp=2, sp=2, tp=2)


# The tensor-parallel groups (tp, sp, dp, dp x sp) reduce over the right ranks: tested on 4 gloo processes in
# tests/parallel/test_tensor_parallel.py, inside the launch that also checks TP2 x SP2 and TP2 x DP2.

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

"""The parallel layout of a run: data-parallel x sequence-parallel degrees and their process groups.

One :class:`ParallelDims` object owns the layout. It is validated against the world size, builds every
process group exactly once (``torch.distributed.new_group`` is collective: all ranks must create all
groups in the same order) and is passed down explicitly; nothing in this project reads a global group.

Rank layout (sequence-parallel innermost, so an SP group sits on one node where possible)::

    rank = dp_rank * sp + sp_rank
    sp group of dp_rank d:  [d*sp, d*sp + 1, ..., d*sp + sp - 1]   (share one window, each keeps a slice)
    dp group of sp_rank s:  [s, sp + s, 2*sp + s, ...]             (see different windows)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist


@dataclass
class ParallelDims:
    """Degrees of parallelism: ``dp`` data-parallel replicas x ``sp`` sequence-parallel shards.

    ``dp * sp`` must equal the world size given to :meth:`build`.
    """

    dp: int
    sp: int = 1
    world_size: int | None = field(default=None, init=False)
    rank: int | None = field(default=None, init=False)
    dp_group: Any = field(default=None, init=False, repr=False)
    sp_group: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dp", "sp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_world(cls, world_size: int, sp: int = 1) -> "ParallelDims":
        """The layout with sequence-parallel degree ``sp`` and every other rank used for data parallelism."""
        if sp < 1 or world_size % sp != 0:
            raise ValueError(
                f"parallel.sequence={sp} does not divide the world size {world_size}: choose a sequence-parallel "
                f"degree that divides the number of processes (e.g. 1)"
            )
        return cls(dp=world_size // sp, sp=sp)

    # --- layout arithmetic (pure, usable before any process group exists) ---
    def validate(self, world_size: int) -> None:
        """Raise ``ValueError`` unless ``dp * sp == world_size``."""
        if self.dp * self.sp != world_size:
            raise ValueError(
                f"dp={self.dp} x sp={self.sp} = {self.dp * self.sp} processes, but the world has {world_size}: "
                f"the degrees must multiply to the number of processes"
            )

    def dp_rank_of(self, rank: int) -> int:
        return rank // self.sp

    def sp_rank_of(self, rank: int) -> int:
        return rank % self.sp

    def sp_group_ranks(self) -> list[list[int]]:
        """Ranks of every sequence-parallel group, in creation order."""
        return [[d * self.sp + s for s in range(self.sp)] for d in range(self.dp)]

    def dp_group_ranks(self) -> list[list[int]]:
        """Ranks of every data-parallel group, in creation order."""
        return [[d * self.sp + s for d in range(self.dp)] for s in range(self.sp)]

    @property
    def dp_rank(self) -> int:
        return self.dp_rank_of(self._require_built())

    @property
    def sp_rank(self) -> int:
        return self.sp_rank_of(self._require_built())

    @property
    def sp_enabled(self) -> bool:
        return self.sp > 1

    # --- process groups ---
    def build(self) -> "ParallelDims":
        """Validate against the initialised default group and create the dp and sp groups (collective)."""
        if not dist.is_initialized():
            raise ValueError("ParallelDims.build() needs torch.distributed to be initialised first")
        if self.rank is not None:
            raise ValueError("ParallelDims.build() was already called; build the groups once and pass the object")
        world_size, rank = dist.get_world_size(), dist.get_rank()
        self.validate(world_size)
        self.world_size, self.rank = world_size, rank
        self.sp_group = self._new_groups(self.sp_group_ranks(), rank)
        self.dp_group = self._new_groups(self.dp_group_ranks(), rank)
        return self

    @staticmethod
    def _new_groups(all_ranks: list[list[int]], rank: int) -> Any:
        mine = None
        for ranks in all_ranks:  # every rank creates every group, in the same order
            group = dist.new_group(ranks=ranks)
            if rank in ranks:
                mine = group
        return mine

    def _require_built(self) -> int:
        if self.rank is None:
            raise ValueError("ParallelDims has no rank yet: call build() after torch.distributed is initialised")
        return self.rank

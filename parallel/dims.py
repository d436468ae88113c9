"""The parallel layout of a run: data-parallel x sequence-parallel x tensor-parallel degrees and their groups.

One :class:`ParallelDims` object owns the layout. It is validated against the world size, builds every
process group exactly once (``torch.distributed.new_group`` is collective: all ranks must create all
groups in the same order) and is passed down explicitly; nothing in this project reads a global group.

Rank layout: tensor-parallel innermost, then sequence-parallel, data-parallel outermost (so a TP group, then an
SP group, sits on one node where possible)::

    rank = (dp_rank * sp + sp_rank) * tp + tp_rank
    tp group of (d, s):  [(d*sp + s)*tp + t for t in range(tp)]   (share one window, each holds 1/tp of a layer)
    sp group of (d, t):  [(d*sp + s)*tp + t for s in range(sp)]   (share one window, each keeps a slice)
    dp group of (s, t):  [(d*sp + s)*tp + t for d in range(dp)]   (see different windows)
    dp x sp group of t:  every rank with tensor-parallel rank t     (hold the same shard of every weight)

With ``tp == 1`` this is the earlier data x sequence layout, rank = dp_rank * sp + sp_rank, and ``build()``
creates exactly the groups it created before (no tensor-parallel groups; the dp x sp group is the world).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist


@dataclass
class ParallelDims:
    """Degrees of parallelism: ``dp`` data-parallel replicas x ``sp`` sequence-parallel shards x ``tp``
    tensor-parallel shards. ``dp * sp * tp`` must equal the world size given to :meth:`build`.
    """

    dp: int
    sp: int = 1
    tp: int = 1
    world_size: int | None = field(default=None, init=False)
    rank: int | None = field(default=None, init=False)
    dp_group: Any = field(default=None, init=False, repr=False)
    sp_group: Any = field(default=None, init=False, repr=False)
    tp_group: Any = field(default=None, init=False, repr=False)
    dp_sp_group: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dp", "sp", "tp"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ParallelDims.{name} must be a positive integer, got {value!r}")

    @classmethod
    def from_world(cls, world_size: int, sp: int = 1, tp: int = 1) -> "ParallelDims":
        """The layout with sequence-parallel degree ``sp``, tensor-parallel degree ``tp`` and every other rank
        used for data parallelism."""
        if tp < 1 or world_size % tp != 0:
            raise ValueError(
                f"parallel.tensor={tp} does not divide the world size {world_size}: choose a tensor-parallel "
                f"degree that divides the number of processes (e.g. 1)"
            )
        if sp < 1 or world_size % (sp * tp) != 0:
            what = f"parallel.sequence={sp}" if tp == 1 else f"parallel.sequence={sp} x parallel.tensor={tp}"
            raise ValueError(
                f"{what} does not divide the world size {world_size}: choose a sequence-parallel "
                f"degree that divides the number of processes (e.g. 1)"
            )
        return cls(dp=world_size // (sp * tp), sp=sp, tp=tp)

    # --- layout arithmetic (pure, usable before any process group exists) ---
    def validate(self, world_size: int) -> None:
        """Raise ``ValueError`` unless ``dp * sp * tp == world_size``."""
        if self.dp * self.sp * self.tp != world_size:
            raise ValueError(
                f"dp={self.dp} x sp={self.sp} x tp={self.tp} = {self.dp * self.sp * self.tp} processes, but the "
                f"world has {world_size}: the degrees must multiply to the number of processes"
            )

    def dp_rank_of(self, rank: int) -> int:
        return rank // (self.sp * self.tp)

    def sp_rank_of(self, rank: int) -> int:
        return rank // self.tp % self.sp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def _rank_at(self, d: int, s: int, t: int) -> int:
        return (d * self.sp + s) * self.tp + t

    def tp_group_ranks(self) -> list[list[int]]:
        """Ranks of every tensor-parallel group, in creation order."""
        return [[self._rank_at(d, s, t) for t in range(self.tp)] for d in range(self.dp) for s in range(self.sp)]

    def sp_group_ranks(self) -> list[list[int]]:
        """Ranks of every sequence-parallel group, in creation order."""
        return [[self._rank_at(d, s, t) for s in range(self.sp)] for d in range(self.dp) for t in range(self.tp)]

    def dp_group_ranks(self) -> list[list[int]]:
        """Ranks of every data-parallel group, in creation order."""
        return [[self._rank_at(d, s, t) for d in range(self.dp)] for s in range(self.sp) for t in range(self.tp)]

    def dp_sp_group_ranks(self) -> list[list[int]]:
        """Ranks of every data x sequence-parallel group (one per tensor-parallel rank), in creation order."""
        return [[self._rank_at(d, s, t) for d in range(self.dp) for s in range(self.sp)] for t in range(self.tp)]

    @property
    def dp_rank(self) -> int:
        return self.dp_rank_of(self._require_built())

    @property
    def sp_rank(self) -> int:
        return self.sp_rank_of(self._require_built())

    @property
    def tp_rank(self) -> int:
        return self.tp_rank_of(self._require_built())

    @property
    def sp_enabled(self) -> bool:
        return self.sp > 1

    @property
    def tp_enabled(self) -> bool:
        return self.tp > 1

    # --- process groups ---
    def build(self) -> "ParallelDims":
        """Validate against the initialised default group and create the groups (collective).

        Order: sp, dp, then (only when ``tp > 1``) tp and dp x sp. With ``tp == 1`` there is no tensor-parallel
        group to create (``tp_group`` stays None) and the dp x sp group is the world.
        """
        if not dist.is_initialized():
            raise ValueError("ParallelDims.build() needs torch.distributed to be initialised first")
        if self.rank is not None:
            raise ValueError("ParallelDims.build() was already called; build the groups once and pass the object")
        world_size, rank = dist.get_world_size(), dist.get_rank()
        self.validate(world_size)
        self.world_size, self.rank = world_size, rank
        self.sp_group = self._new_groups(self.sp_group_ranks(), rank)
        self.dp_group = self._new_groups(self.dp_group_ranks(), rank)
        if self.tp > 1:
            self.tp_group = self._new_groups(self.tp_group_ranks(), rank)
            self.dp_sp_group = self._new_groups(self.dp_sp_group_ranks(), rank)
        else:
            self.dp_sp_group = dist.group.WORLD
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

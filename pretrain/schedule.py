"""Schedules: the learning rate over optimizer steps, and the sequence-length warm-up plan.

Learning rate (``lr_at``): linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps`` optimizer
steps, then a half cosine from ``lr`` down to the floor ``min_lr`` at ``max_steps`` (held there after). With
``schedule="constant"`` the rate stays at ``lr`` after warm-up.

Sequence-length warm-up (``build_stages``): training runs through stages of increasing window length L. The
number of tokens per optimizer step is the same in every stage: a step holds ``tokens_per_step / L`` windows,
dealt evenly to the data-parallel ranks, each of which runs ``grad_accum`` micro-batches of ``micro_batch``
windows. (HyenaDNA's warm-up sets the accumulation without the device count, so its tokens per step grow with
the number of GPUs; here the data-parallel size is part of the arithmetic.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int,
          schedule: str = "cosine") -> float:
    """Learning rate for the update that follows ``step`` completed optimizer steps (0-based)."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule != "cosine":
        raise ValueError(f"unknown LR schedule {schedule!r}; expected 'cosine' or 'constant'")
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_lambda(*, lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine"):
    """A ``torch.optim.lr_scheduler.LambdaLR`` multiplier (base LR = ``lr``) following :func:`lr_at`."""
    if lr <= 0:
        raise ValueError(f"train.lr must be positive, got {lr}")

    def factor(step: int) -> float:
        return lr_at(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, max_steps=max_steps,
                     schedule=schedule) / lr

    return factor


@dataclass(frozen=True)
class Stage:
    """One stage of sequence-length warm-up: steps ``[start_step, end_step)`` at window length ``seq_len``.

    ``end_step`` is ``None`` for the last stage (it runs to the end of training). Per data-parallel rank, an
    optimizer step is ``grad_accum`` micro-batches of ``micro_batch`` windows.
    """

    index: int
    seq_len: int
    start_step: int
    end_step: int | None
    micro_batch: int
    grad_accum: int

    def contains(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step is None or step < self.end_step)


def batch_split(*, tokens_per_step: int, seq_len: int, dp: int, micro_batch_tokens: int) -> tuple[int, int]:
    """``(micro_batch, grad_accum)`` per data-parallel rank giving exactly ``tokens_per_step`` tokens per step.

    ``micro_batch`` is the largest divisor of the rank's windows per step whose tokens fit in
    ``micro_batch_tokens`` (at least one window, however long).
    """
    if tokens_per_step % seq_len:
        raise ValueError(
            f"train.tokens_per_step={tokens_per_step} is not a multiple of the window length {seq_len}: "
            f"every stage's length must divide the tokens per optimizer step"
        )
    windows = tokens_per_step // seq_len
    if windows % dp:
        raise ValueError(
            f"at window length {seq_len}, an optimizer step holds {windows} windows, which cannot be dealt evenly "
            f"to {dp} data-parallel ranks: raise train.tokens_per_step to a multiple of {seq_len * dp}, "
            f"use fewer data-parallel ranks, or shard the window with parallel.sequence"
        )
    per_rank = windows // dp
    limit = max(1, micro_batch_tokens // seq_len)
    micro_batch = max(d for d in range(1, min(per_rank, limit) + 1) if per_rank % d == 0)
    return micro_batch, per_rank // micro_batch


def build_stages(*, seq_lens: list[int], stage_tokens: list[int], tokens_per_step: int, dp: int,
                 micro_batch_tokens: int) -> list[Stage]:
    """The warm-up plan: stage ``i`` trains ``seq_lens[i]`` for ``ceil(stage_tokens[i] / tokens_per_step)`` steps.

    ``stage_tokens`` has one entry fewer than ``seq_lens``: the last length has no end.
    """
    if len(stage_tokens) != len(seq_lens) - 1:
        raise ValueError("build_stages: need one token budget per warm-up stage (all lengths but the last)")
    stages, start = [], 0
    for i, seq_len in enumerate(seq_lens):
        micro_batch, grad_accum = batch_split(tokens_per_step=tokens_per_step, seq_len=seq_len, dp=dp,
                                              micro_batch_tokens=micro_batch_tokens)
        end = None
        if i < len(stage_tokens):
            if stage_tokens[i] <= 0:
                raise ValueError(f"warm-up stage {i} (seq_len {seq_len}) must last a positive number of tokens")
            end = start + math.ceil(stage_tokens[i] / tokens_per_step)
        stages.append(Stage(i, seq_len, start, end, micro_batch, grad_accum))
        start = end if end is not None else start
    return stages


def stage_at(stages: list[Stage], step: int) -> Stage:
    """The stage that optimizer step ``step`` (0-based) belongs to."""
    for stage in stages:
        if stage.contains(step):
            return stage
    raise ValueError(f"step {step} is before the first warm-up stage")

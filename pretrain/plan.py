"""From config to data: the streams of a rank and the warm-up plan in optimizer steps.

A stage's duration is given in ``tokens`` or in ``epochs`` of the train split; an epoch at window length L
is what the stream deals out in one pass over the split at that length (``batches_per_epoch`` per rank x
micro-batch x L x data-parallel ranks), so epochs depend on the shards and are resolved here at start-up.
"""

from __future__ import annotations

from parallel import ParallelDims
from pretrain.config import Config
from pretrain.schedule import Stage, batch_split, build_stages


def make_stream(cfg: Config, dims: ParallelDims, *, split: str, train: bool, seq_len: int | None = None,
                micro_batch: int = 1):
    """This rank's :class:`pretrain.data.WindowStream` over ``split``.

    ``train=True``: the endless shuffled stream with the run's augmentation. ``train=False``: one pass for
    evaluation, every base weighted 1 (perplexity over all non-N targets) and no augmentation. When
    ``train.eval_batches`` limits the pass, its windows are drawn across the whole split by the run's seed (the
    same windows at every evaluation); in genome order the first batches would all come from the start of one
    chromosome (often its N-filled telomere).
    """
    from pretrain.data import WindowStream

    d = cfg.data
    common = dict(seq_len=seq_len or cfg.train.seq_lens()[0], micro_batch=micro_batch, seed=cfg.run.seed,
                  dp_rank=dims.dp_rank, dp_size=dims.dp, sp_rank=dims.sp_rank, sp_size=dims.sp,
                  num_workers=d.num_workers)
    if train:
        return WindowStream(d.path, split, rc_prob=d.rc_prob, soft_mask_weight=d.soft_mask_weight, shuffle=True,
                            epochs=None, **common)
    return WindowStream(d.path, split, rc_prob=0.0, soft_mask_weight=1.0,
                        shuffle=cfg.train.eval_batches is not None, epochs=1, **common)


def stage_tokens(cfg: Config, dims: ParallelDims) -> list[int]:
    """Token budget of every warm-up stage (epochs converted through the train split's size at that length)."""
    t, budgets = cfg.train, []
    for stage in t.warmup_stages:
        if stage.tokens is not None:
            budgets.append(round(stage.tokens))
            continue
        micro_batch, _ = batch_split(tokens_per_step=t.tokens_per_step, seq_len=stage.seq_len, dp=dims.dp,
                                     micro_batch_tokens=t.micro_batch_tokens)
        stream = make_stream(cfg, dims, split=cfg.data.train_split, train=True, seq_len=stage.seq_len,
                             micro_batch=micro_batch)
        per_epoch = stream.batches_per_epoch() * micro_batch * stage.seq_len * dims.dp
        if per_epoch == 0:
            raise ValueError(f"the train split of {cfg.data.path} holds no window of length {stage.seq_len}")
        budgets.append(round(stage.epochs * per_epoch))
    return budgets


def build_plan(cfg: Config, dims: ParallelDims) -> list[Stage]:
    """The warm-up stages of this run for its data-parallel size.

    The last stage must start within the run: before ``train.max_steps``, or before ``train.lr_decay_steps``
    when that is set (a run that trains part of a longer schedule and is continued with a larger max_steps).
    """
    t = cfg.train
    stages = build_stages(seq_lens=t.seq_lens(), stage_tokens=stage_tokens(cfg, dims),
                          tokens_per_step=t.tokens_per_step, dp=dims.dp, micro_batch_tokens=t.micro_batch_tokens)
    key = "train.max_steps" if t.lr_decay_steps is None else "train.lr_decay_steps"
    if stages[-1].start_step >= t.schedule_steps():
        raise ValueError(
            f"the warm-up stages take {stages[-1].start_step} optimizer steps but {key}={t.schedule_steps()}: "
            f"train.seq_len={t.seq_len} would never be reached; raise {key} or shorten the stages"
        )
    return stages

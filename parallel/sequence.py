"""``apply_sequence_parallel(model, dims)``: shard every window of a model across the ranks of an SP group.

After it, each rank of a sequence-parallel group feeds the model its contiguous slice ``[r*L/P, (r+1)*L/P)``
of the same windows (what :class:`pretrain.data.WindowStream` gives it) and gets the logits of that slice;
concatenated in rank order they are the logits of the whole window, and the sum over the group of each
parameter's gradient is the single-process gradient of the summed loss (so a loss normalised by the token
count of the whole group gives the single-process gradient of the mean: see ``pretrain.loss.lm_loss``). The
mixers' sequence-mixing steps are replaced per module (:mod:`parallel.mixers`); the model's files, classes,
parameters and state dict are unchanged, so checkpoints move freely between SP degrees.

Every user error is raised before the first collective (so no rank waits for a peer that has left):
:func:`check_sequence_parallel` checks a model config and window lengths without any process group (the training
config calls it), and the wrapped model checks each input's global length before its first layer runs.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from parallel.collectives import all_gather_stack
from parallel.dims import ParallelDims
from parallel.mixers import SPState, wrap_attention, wrap_hyena, wrap_mamba

SPLITTABLE_ARCHS = ("hyena", "mamba", "transformer")


def halo_width(cfg) -> int:
    """Positions a rank needs from the slice before it (its causal conv's taps - 1; 0 for attention)."""
    if cfg.arch == "hyena":
        return cfg.hyena.short_filter_order - 1
    if cfg.arch == "mamba":
        return cfg.mamba.d_conv - 1
    return 0


def check_sequence_parallel(cfg, sp: int, seq_lens: Iterable[int] = ()) -> None:
    """Raise ``ValueError`` unless a model of ``cfg`` (a ``models.config.ModelConfig``) can run windows of every
    length in ``seq_lens`` split over ``sp`` ranks. Pure: needs no process group."""
    if sp == 1:
        return
    if sp < 1:
        raise ValueError(f"parallel.sequence must be >= 1, got {sp}")
    if cfg.arch not in SPLITTABLE_ARCHS:
        raise ValueError(f"model.arch={cfg.arch!r} has no sequence-parallel implementation (only "
                         f"{list(SPLITTABLE_ARCHS)}): use parallel.sequence=1")
    if cfg.arch == "hyena" and cfg.d_model % sp:
        raise ValueError(f"Hyena sequence parallelism shards the long convolution by channels: model.d_model="
                         f"{cfg.d_model} is not divisible by parallel.sequence={sp}")
    if cfg.arch == "transformer" and cfg.transformer.n_head % sp:
        raise ValueError(f"Transformer sequence parallelism (Ulysses) shards attention by heads: "
                         f"model.transformer.n_head={cfg.transformer.n_head} is not divisible by "
                         f"parallel.sequence={sp}")
    for L in seq_lens:
        check_length(cfg, sp, L)


def check_length(cfg, sp: int, L: int) -> None:
    """One window length ``L`` (global, before splitting) against ``sp`` and the model."""
    if L % sp:
        raise ValueError(f"window length {L} is not divisible by parallel.sequence={sp}: each sequence-parallel "
                         f"rank keeps an equal slice")
    if L > cfg.l_max:
        raise ValueError(f"window length {L} exceeds model.l_max={cfg.l_max} (split over {sp} ranks, each "
                         f"holding {L // sp}): use shorter windows or a model built with a larger l_max")
    width = halo_width(cfg)
    if L // sp < max(width, 1):
        raise ValueError(f"window length {L} split over parallel.sequence={sp} leaves {L // sp} positions per rank, "
                         f"fewer than the {width} that the {cfg.arch} causal convolution needs from the slice before"
                         f": use longer windows or a smaller parallel.sequence")


def apply_sequence_parallel(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Make ``model`` (a ``models.DNALM``, or any module holding the three mixers) sequence parallel over
    ``dims.sp_group``, in place; returns it. A no-op when ``dims.sp == 1``.

    Raises ``ValueError`` (before any communication) if ``dims`` is not built, if the model was already
    wrapped, or if a mixer cannot be split ``dims.sp`` ways (d_model / heads not divisible, unknown mixer).
    """
    if dims.sp == 1:
        return model
    if dims.rank is None:
        raise ValueError("apply_sequence_parallel needs a built ParallelDims: call dims.build() after "
                         "torch.distributed is initialised")
    if getattr(model, "_sp_applied", False):
        raise ValueError("apply_sequence_parallel was already applied to this model")
    cfg = getattr(model, "config", None)
    if cfg is not None:
        check_sequence_parallel(cfg, dims.sp)
    from models.attention import CausalSelfAttention
    from models.hyena import HyenaOperator
    from models.mamba import Mamba

    wrappers = {HyenaOperator: wrap_hyena, Mamba: wrap_mamba, CausalSelfAttention: wrap_attention}
    targets = [(name, m, wrappers[type(m)]) for name, m in model.named_modules() if type(m) in wrappers]
    if not targets:
        raise ValueError(f"apply_sequence_parallel found no Hyena, Mamba or attention mixer in "
                         f"{type(model).__name__}: nothing here can be split along the sequence")
    if any(wrap is wrap_attention for _, _, wrap in targets):
        _ensure_deepspeed_comm()
    for name, module, wrap in targets:
        wrap(module, SPState(group=dims.sp_group, size=dims.sp, rank=dims.sp_rank, tag=name))
    if cfg is not None and hasattr(model, "hidden_states"):
        model._sp_orig_hidden_states = model.hidden_states
        model._sp_size = dims.sp
        model.hidden_states = _checked_hidden_states.__get__(model)
    model._sp_applied = True
    return model


def _checked_hidden_states(self, input_ids=None, inputs_embeds=None):
    """``DNALM.hidden_states`` on a slice, after checking the global length (before any collective)."""
    x = input_ids if input_ids is not None else inputs_embeds
    if x is not None and x.dim() >= 2:
        check_length(self.config, self._sp_size, x.shape[1] * self._sp_size)
    return self._sp_orig_hidden_states(input_ids=input_ids, inputs_embeds=inputs_embeds)


def _ensure_deepspeed_comm() -> None:
    """DeepSpeed's DistributedAttention talks through ``deepspeed.comm``: attach it to the running process
    group (without building its shared-memory op on gloo, a minute of JIT compile that gloo does not use)."""
    import importlib

    import deepspeed
    import deepspeed.comm as ds_comm
    import torch.distributed as dist

    if ds_comm.is_initialized():
        return
    backend = dist.get_backend()
    if backend == "gloo":
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def shard_sequence(x: torch.Tensor, dims: ParallelDims, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous slice of ``x`` along ``dim`` (``[r*L/P, (r+1)*L/P)``); L must divide by P."""
    L = x.shape[dim]
    if L % dims.sp:
        raise ValueError(f"length {L} is not divisible by the sequence-parallel degree {dims.sp}")
    return x.narrow(dim, dims.sp_rank * (L // dims.sp), L // dims.sp)


def gather_sequence(x: torch.Tensor, dims: ParallelDims, dim: int = 1) -> torch.Tensor:
    """The slices of every rank of the SP group concatenated along ``dim`` (differentiable: the backward hands
    each rank the gradient of its own slice, summed over the ranks that used it)."""
    if dims.sp == 1:
        return x
    stacked = all_gather_stack(x, dims.sp_group, tag="gather_sequence")
    return torch.cat(list(stacked.unbind(0)), dim=dim)

"""``apply_tensor_parallel(model, dims)``: split every block's layers over the ranks of a tensor-parallel group.

Applied from outside, like sequence parallelism: the model's modules are rebuilt in place with this rank's share
of their weights (the model files hold no distributed code), megatron-core's ``ColumnParallelLinear`` /
``RowParallelLinear`` (:mod:`parallel.megatron_layers`) in place of the Linears. Every rank of a TP group feeds
the whole input and gets the whole output of each block; inside, each holds 1/tp of the channels:

- Hyena: ``in_proj`` column-parallel by channel (this rank's d/tp of each of x0, x1, v); the short conv, the
  implicit filter's last layer, its decay rates and the bias D for this rank's channels only, so the gating and
  the FFT long convolution need no communication (channel-separable); ``out_proj`` row-parallel. The filter MLP
  before its last layer is replicated; since each rank uses it for its own channels, its gradient is summed
  over the group where its parameters are used (an identity whose backward is an all-reduce, :func:`sum_grad`).
- Mamba: ``in_proj`` column-parallel over d_inner (this rank's share of x and z); the conv, ``A_log``, ``D``,
  ``dt_proj`` (column-parallel: its rows) and the scan on this rank's channels; ``x_proj`` row-parallel, its
  output (Δ, B, C: dt_rank + 2N numbers per token) all-reduced forward and, because every rank uses it for its
  own channels, its gradient all-reduced backward; ``out_proj`` row-parallel.
- Transformer: ``qkv`` column-parallel by heads (n_head/tp heads per rank), ``out_proj`` row-parallel.
- Every block's MLP: ``fc1`` column-parallel (both halves of SwiGLU's), ``fc2`` row-parallel.

Embedding, norms and the (tied) head are replicated and see the whole hidden state, so their gradients are whole
on every rank. Per block and direction a rank all-reduces the (B, L, d) output of each row-parallel layer
(forward) and the (B, L, d) input gradient of each column-parallel one (backward), plus Mamba's (B, L, R + 2N).

Apply tensor parallelism first, then :func:`parallel.apply_sequence_parallel` (it splits the local channels).
Every user error is raised before the first collective: :func:`check_tensor_parallel` checks a model config
without any process group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from parallel.dims import ParallelDims

SPLITTABLE_ARCHS = ("hyena", "mamba", "transformer")
_MEGATRON_ATTRIBUTES = ("tensor_model_parallel", "partition_dim", "partition_stride", "expert_tp", "is_qkv")


@dataclass
class TPState:
    """What a split module needs: its tensor-parallel group, degree and rank in the group."""

    group: Any
    size: int
    rank: int


# ---------------------------------------------------------------------------------------------------------
# checks (no process group)


def check_tensor_parallel(cfg, tp: int, sp: int = 1) -> None:
    """Raise ``ValueError`` unless a model of ``cfg`` (a ``models.config.ModelConfig``) splits ``tp`` ways, and
    its local channels / heads then split ``sp`` ways for sequence parallelism. Pure: needs no process group."""
    if not isinstance(tp, int) or tp < 1:
        raise ValueError(f"parallel.tensor must be an integer >= 1, got {tp!r}")
    if tp == 1:
        return
    if cfg.arch not in SPLITTABLE_ARCHS:
        raise ValueError(f"model.arch={cfg.arch!r} has no tensor-parallel implementation (only "
                         f"{list(SPLITTABLE_ARCHS)}): use parallel.tensor=1")
    if cfg.arch == "hyena":
        _divisible("model.d_model", cfg.d_model, tp, "Hyena tensor parallelism splits the channels")
        if sp > 1:
            _divisible("model.d_model / parallel.tensor", cfg.d_model // tp, sp,
                       "Hyena sequence parallelism then splits this rank's channels", "parallel.sequence")
    if cfg.arch == "mamba":
        d_inner = cfg.mamba.expand * cfg.d_model
        _divisible("Mamba's d_inner (model.mamba.expand x model.d_model)", d_inner, tp,
                   "Mamba tensor parallelism splits the inner channels")
    if cfg.arch == "transformer":
        heads = cfg.transformer.n_head
        _divisible("model.transformer.n_head", heads, tp, "Transformer tensor parallelism splits the heads")
        if sp > 1:
            _divisible("model.transformer.n_head / parallel.tensor", heads // tp, sp,
                       "Ulysses then splits this rank's heads", "parallel.sequence")
    if cfg.mlp_width:
        _divisible("the MLP width (model.d_inner)", cfg.mlp_width, tp, "the MLP's hidden units are split")


def _divisible(name: str, value: int, by: int, why: str, degree: str = "parallel.tensor") -> None:
    if value % by:
        raise ValueError(f"{name}={value} is not divisible by {degree}={by}: {why}; choose a {degree} that divides "
                         f"{value} (e.g. 1)")


# ---------------------------------------------------------------------------------------------------------
# sharding arithmetic (pure)


def shard_tensor(full: torch.Tensor, rank: int, size: int, dim: int, stride: int = 1) -> torch.Tensor:
    """Rank ``rank``'s shard of ``full`` along ``dim``: ``full`` is ``stride`` equal pieces along ``dim`` (fused
    projections), each split ``size`` ways; the shard is the rank-th part of every piece, concatenated."""
    pieces = full.chunk(stride, dim)
    return torch.cat([piece.chunk(size, dim)[rank] for piece in pieces], dim)


def merge_shards(shards: list[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The inverse of :func:`shard_tensor`: the whole tensor from every rank's shard, in rank order."""
    per_rank = [s.chunk(stride, dim) for s in shards]
    return torch.cat([part[j] for j in range(stride) for part in per_rank], dim)


def tensor_parallel_spec(p: torch.Tensor) -> tuple[int, int] | None:
    """(dim, stride) of a tensor-parallel parameter (megatron's attributes), None for a replicated one."""
    if getattr(p, "tensor_model_parallel", False):
        return p.partition_dim, p.partition_stride
    return None


def carry_attributes(old: torch.Tensor, new: torch.Tensor) -> None:
    """Copy the model's tags of a parameter (``_no_weight_decay``, ``_no_reinit``, ...) to its replacement."""
    for key, value in vars(old).items():
        if key not in _MEGATRON_ATTRIBUTES:
            setattr(new, key, value)


# ---------------------------------------------------------------------------------------------------------
# the one collective of our own (megatron's layers bring theirs)


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward all-reduces (sums) the gradient over ``group`` (megatron's "copy to tensor
    parallel region", here on a fresh contiguous buffer so that no caller's gradient is modified in place)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_grad(x: torch.Tensor, group) -> torch.Tensor:
    """``x`` unchanged; its gradient becomes the sum of every rank's in ``group``."""
    return _SumGrad.apply(x, group)


class SummedGradLinear(nn.Linear):
    """An ``nn.Linear`` replicated on every TP rank whose output feeds this rank's channels only: its weight and
    bias gradients are summed over the group where they are used (so every rank holds the whole gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = self._tp.group
        return F.linear(x, sum_grad(self.weight, group), None if self.bias is None else sum_grad(self.bias, group))


def _summed_grad_sin():
    from models.hyena import Sin

    class SummedGradSin(Sin):
        """Hyena's ``Sin`` with its frequency's gradient summed over the TP group (see SummedGradLinear)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(sum_grad(self.freq, self._tp.group) * x)

    return SummedGradSin


# ---------------------------------------------------------------------------------------------------------
# the wrappers


def _split_hyena(m: nn.Module, tp: TPState, layers) -> None:
    from models.hyena import Sin

    d = m.d_model
    _divisible("Hyena d_model", d, tp.size, "Hyena tensor parallelism splits the channels")
    m.in_proj = layers.column_parallel(m.in_proj, tp, stride=3)  # [x0 | x1 | v]
    conv = m.short_filter
    for name in ("weight", "bias"):
        if conv._parameters.get(name) is not None:
            layers.shard_parameter(conv, name, tp, 0, stride=3)
    conv.in_channels = conv.out_channels = conv.groups = 3 * d // tp.size
    f = m.filter_fn
    layers.shard_parameter(f, "bias", tp, 0)  # D
    last = f.implicit_filter[-1]
    for name in ("weight", "bias"):
        if last._parameters.get(name) is not None:
            layers.shard_parameter(last, name, tp, 0)
    last.out_features = d // tp.size
    mod = f.modulation
    mod._buffers["deltas"] = shard_tensor(mod.deltas, tp.rank, tp.size, 2).clone()  # non-persistent, per channel
    f._window = None  # the cached decay window was the whole model's
    sin_cls = _summed_grad_sin()
    for layer in list(f.implicit_filter)[:-1]:  # replicated; Sin is one module shared by the hidden layers
        if type(layer) is nn.Linear:
            layer.__class__ = SummedGradLinear
        elif type(layer) is Sin:
            layer.__class__ = sin_cls
        elif not isinstance(layer, (SummedGradLinear, sin_cls)) and any(True for _ in layer.parameters()):
            raise ValueError(f"apply_tensor_parallel: unexpected layer {type(layer).__name__} with parameters "
                             f"in the Hyena filter MLP")
        layer._tp = tp
    m.out_proj = layers.row_parallel(m.out_proj, tp)
    m.d_model = d // tp.size


def _split_mamba(m: nn.Module, tp: TPState, layers) -> None:
    di = m.d_inner
    _divisible("Mamba d_inner", di, tp.size, "Mamba tensor parallelism splits the inner channels")
    m.in_proj = layers.column_parallel(m.in_proj, tp, stride=2)  # [x | z]
    conv = m.conv1d
    for name in ("weight", "bias"):
        if conv._parameters.get(name) is not None:
            layers.shard_parameter(conv, name, tp, 0)
    conv.in_channels = conv.out_channels = conv.groups = di // tp.size
    m.x_proj = layers.row_parallel(m.x_proj, tp, to_sharded=True)
    for name in ("weight", "bias"):  # column-parallel: the model reads dt_proj.weight / .bias, not its forward
        layers.shard_parameter(m.dt_proj, name, tp, 0)
    m.dt_proj.out_features = di // tp.size
    layers.shard_parameter(m, "A_log", tp, 0)
    layers.shard_parameter(m, "D", tp, 0)
    m.out_proj = layers.row_parallel(m.out_proj, tp)
    m.d_inner = di // tp.size


def _split_attention(m: nn.Module, tp: TPState, layers) -> None:
    _divisible("transformer n_head", m.n_head, tp.size, "Transformer tensor parallelism splits the heads")
    m.qkv = layers.column_parallel(m.qkv, tp, stride=3)  # [q | k | v], heads contiguous in each
    m.out_proj = layers.row_parallel(m.out_proj, tp)
    m.n_head //= tp.size


def _split_mlp(m: nn.Module, tp: TPState, layers) -> None:
    from models.layers import GatedMlp

    hidden = m.fc2.in_features
    _divisible("the MLP width", hidden, tp.size, "the MLP's hidden units are split")
    m.fc1 = layers.column_parallel(m.fc1, tp, stride=2 if isinstance(m, GatedMlp) else 1)  # SwiGLU: [a | gate]
    m.fc2 = layers.row_parallel(m.fc2, tp)


def apply_tensor_parallel(model: nn.Module, dims: ParallelDims) -> nn.Module:
    """Split ``model`` (a ``models.DNALM``, or any module holding the three mixers / MLPs) over
    ``dims.tp_group``, in place; returns it. A no-op when ``dims.tp == 1``. Apply before sequence parallelism.

    Raises ``ValueError`` (before any communication) if ``dims`` is not built, if the model was already split
    or already made sequence parallel, or if a layer cannot be split ``dims.tp`` ways.
    """
    if dims.tp == 1:
        return model
    if dims.rank is None:
        raise ValueError("apply_tensor_parallel needs a built ParallelDims: call dims.build() after "
                         "torch.distributed is initialised")
    if getattr(model, "_tp_applied", False):
        raise ValueError("apply_tensor_parallel was already applied to this model")
    if getattr(model, "_sp_applied", False):
        raise ValueError("apply_tensor_parallel must come before apply_sequence_parallel (which splits the "
                         "channels or heads that tensor parallelism leaves on this rank)")
    cfg = getattr(model, "config", None)
    if cfg is not None:
        check_tensor_parallel(cfg, dims.tp, dims.sp)
    from models.attention import CausalSelfAttention
    from models.hyena import HyenaOperator
    from models.layers import GatedMlp, Mlp
    from models.mamba import Mamba

    splitters = {HyenaOperator: _split_hyena, Mamba: _split_mamba, CausalSelfAttention: _split_attention,
                 Mlp: _split_mlp, GatedMlp: _split_mlp}
    targets = [(m, splitters[type(m)]) for m in model.modules() if type(m) in splitters]
    if not any(split is not _split_mlp for _, split in targets):
        raise ValueError(f"apply_tensor_parallel found no Hyena, Mamba or attention mixer in "
                         f"{type(model).__name__}: nothing here to split")
    from parallel import megatron_layers  # megatron-core is imported here, on first use

    tp = TPState(group=dims.tp_group, size=dims.tp, rank=dims.tp_rank)
    for module, split in targets:
        split(module, tp, megatron_layers)
    model._tp_applied = True
    return model


# ---------------------------------------------------------------------------------------------------------
# whole tensors back from the shards


def gather_tensor_parallel(t: torch.Tensor, spec: tuple[int, int] | None, dims: ParallelDims) -> torch.Tensor:
    """The whole tensor from every TP rank's shard ``t`` (collective over ``dims.tp_group``); ``spec`` is
    :func:`tensor_parallel_spec` of its parameter (None: replicated, returned as it is)."""
    if spec is None or dims.tp == 1:
        return t
    shards = [torch.empty_like(t) for _ in range(dims.tp)]
    dist.all_gather(shards, t.detach().contiguous(), group=dims.tp_group)
    return merge_shards(shards, *spec)


def gather_tensor_parallel_state_dict(model: nn.Module, dims: ParallelDims) -> dict[str, torch.Tensor]:
    """The state dict of the unsplit model, from a tensor-parallel one (collective over ``dims.tp_group``):
    the same keys and shapes as before :func:`apply_tensor_parallel` (megatron's ``_extra_state`` entries
    dropped), loadable by ``models.build_model(model.config)``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("_extra_state"):
            continue
        p = params.get(key)
        out[key] = gather_tensor_parallel(value, None if p is None else tensor_parallel_spec(p), dims)
    return out


def tensor_parallel_specs(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{state-dict key: (dim, stride)}`` of every split parameter of a tensor-parallel model (every name of a
    shared parameter included): what :func:`merge_tensor_parallel_state_dicts` needs to join saved shards."""
    return {name: spec for name, p in model.named_parameters(remove_duplicate=False)
            if (spec := tensor_parallel_spec(p)) is not None}


def merge_tensor_parallel_state_dicts(shards: list[dict], specs: dict[str, tuple[int, int]]) -> dict:
    """The unsplit model's state dict from every TP rank's state dict (in TP-rank order, e.g. DeepSpeed's
    ``mp_rank_XX_model_states.pt`` modules), without any process group. Split keys (``specs``, from
    :func:`tensor_parallel_specs`) are joined; every other key must hold the same tensor on every rank (a
    ``ValueError`` names the first that does not: those files do not belong to one checkpoint)."""
    keys = [k for k in shards[0] if not k.endswith("_extra_state")]
    for r, shard in enumerate(shards[1:], 1):
        if set(k for k in shard if not k.endswith("_extra_state")) != set(keys):
            raise ValueError(f"the state dicts of TP ranks 0 and {r} hold different keys: not one checkpoint")
    out = {}
    for k in keys:
        if k in specs:
            out[k] = merge_shards([shard[k] for shard in shards], *specs[k])
            continue
        for r, shard in enumerate(shards[1:], 1):
            if not torch.equal(shard[k], shards[0][k]):
                raise ValueError(f"{k} is replicated but differs between TP ranks 0 and {r}: not one checkpoint")
        out[k] = shards[0][k]
    return out

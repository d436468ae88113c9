"""megatron-core's tensor-parallel linear layers, built from a model's ``nn.Linear`` with that Linear's own weights.

Imported only when tensor parallelism is applied (importing megatron-core takes seconds). The layers are made
with ``use_cpu_initialization=True, perform_initialization=False`` and an explicit ``tp_group``: no weight is
drawn (the model's own are copied in), so neither megatron's CUDA RNG tracker nor its global
``parallel_state`` is used, and the same code runs on CPU (gloo) and GPU (NCCL). ``forward`` returns the
output tensor (megatron's returns ``(output, bias)``), so the layers drop into a model in place of its Linears.

Sharding follows megatron's parameter attributes (``tensor_model_parallel``, ``partition_dim``,
``partition_stride``): a weight of ``stride`` fused pieces (Hyena's in_proj [x0 | x1 | v], the attention's
[q | k | v], Mamba's [x | z]) gives rank r the r-th 1/tp of every piece, which is megatron's strided split.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

# megatron-core warns at import that apex / Transformer Engine are absent; its torch fallbacks are what we use
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel.layers import (ColumnParallelLinear, RowParallelLinear,
                                                      set_tensor_model_parallel_attributes)

from parallel.tensor import TPState, carry_attributes, shard_tensor, sum_grad


def _config(dtype: torch.dtype, size: int) -> ModelParallelConfig:
    return ModelParallelConfig(tensor_model_parallel_size=size, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=dtype)


def _no_init(weight: torch.Tensor) -> None:  # never called: perform_initialization=False
    raise AssertionError("tensor-parallel layers take the model's weights, they draw none")


class ColumnParallel(ColumnParallelLinear):
    """``ColumnParallelLinear`` (output features split over the TP group; input gradient all-reduced) that returns
    this rank's output features (bias added)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class RowParallel(RowParallelLinear):
    """``RowParallelLinear`` (input features split; output all-reduced, then the bias) that returns the output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[0]


class RowParallelToSharded(RowParallel):
    """``RowParallel`` whose output feeds channel-sharded computation on every rank (Mamba's x_proj: Δ, B, C are
    used by this rank's channels only), so its gradient is summed over the group too: all-reduce forward and
    backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum_grad(super().forward(x), self.tp_group)


@torch.no_grad()
def column_parallel(linear: nn.Linear, tp: TPState, stride: int = 1) -> ColumnParallel:
    """The column-parallel version of ``linear`` holding this rank's rows of each of its ``stride`` pieces."""
    out_features, in_features = linear.weight.shape
    layer = ColumnParallel(in_features, out_features, config=_config(linear.weight.dtype, tp.size),
                           init_method=_no_init, bias=linear.bias is not None, stride=stride, tp_group=tp.group)
    layer.weight.copy_(shard_tensor(linear.weight, tp.rank, tp.size, 0, stride))
    set_tensor_model_parallel_attributes(layer.weight, True, 0, stride)
    carry_attributes(linear.weight, layer.weight)
    if linear.bias is not None:  # megatron marks the bias (dim 0, stride) itself
        layer.bias.copy_(shard_tensor(linear.bias, tp.rank, tp.size, 0, stride))
        carry_attributes(linear.bias, layer.bias)
    return layer.to(linear.weight.device)


@torch.no_grad()
def row_parallel(linear: nn.Linear, tp: TPState, to_sharded: bool = False) -> RowParallel:
    """The row-parallel version of ``linear`` holding this rank's input columns (the bias stays whole)."""
    out_features, in_features = linear.weight.shape
    cls = RowParallelToSharded if to_sharded else RowParallel
    layer = cls(in_features, out_features, config=_config(linear.weight.dtype, tp.size), init_method=_no_init,
                bias=linear.bias is not None, input_is_parallel=True, skip_bias_add=False, tp_group=tp.group)
    layer.weight.copy_(shard_tensor(linear.weight, tp.rank, tp.size, 1, 1))
    set_tensor_model_parallel_attributes(layer.weight, True, 1, 1)
    carry_attributes(linear.weight, layer.weight)
    if linear.bias is not None:
        layer.bias.copy_(linear.bias)
        carry_attributes(linear.bias, layer.bias)
    return layer.to(linear.weight.device)


def shard_parameter(module: nn.Module, name: str, tp: TPState, dim: int, stride: int = 1) -> None:
    """Replace ``module.<name>`` by this rank's shard along ``dim`` (megatron's attributes set on it)."""
    old = module._parameters[name]
    new = nn.Parameter(shard_tensor(old.detach(), tp.rank, tp.size, dim, stride).clone(),
                       requires_grad=old.requires_grad)
    carry_attributes(old, new)
    set_tensor_model_parallel_attributes(new, True, dim, stride)
    module._parameters[name] = new

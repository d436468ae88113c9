"""Building the pieces of a run: optimizer parameter groups, the LR schedule and the DeepSpeed engine."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from pretrain.config import Config
from pretrain.ds_config import build_ds_config
from pretrain.schedule import Stage, lr_lambda


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed parameters, and those the model tags ``p._no_weight_decay = True``."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if getattr(param, "_no_weight_decay", False) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"},
              {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"}]
    return [g for g in groups if g["params"]]


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that clips by the global norm and skips its update when a gradient is not finite.

    Used without ZeRO in fp32, where DeepSpeed hands the client optimizer the all-reduced gradients as they
    are (its ZeRO and bf16 optimizers check for non-finite gradients themselves). DeepSpeed reads ``overflow``
    (to count a skipped step and hold the LR schedule) and ``_global_grad_norm`` (for logging).

    ``tp_group`` (tensor parallelism): the norm is the whole model's, as DeepSpeed's ZeRO optimizers compute it
    with the mpu: the squares of the tensor-parallel shards (parameters with megatron's ``tensor_model_parallel``)
    summed over the group, the replicated parameters counted once (those of TP rank 0).
    """

    def __init__(self, params, *, max_grad_norm: float, tp_group=None, **kwargs):
        super().__init__(params, **kwargs)
        self.max_grad_norm = max_grad_norm
        self.tp_group = tp_group
        self.overflow = False
        self._global_grad_norm = None

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        max_norm = self.max_grad_norm if self.max_grad_norm > 0 else float("inf")
        if self.tp_group is not None:
            norm = _clip_tensor_parallel_(params, max_norm, self.tp_group)
        else:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm) if params else torch.tensor(0.0)
        self._global_grad_norm = float(norm)
        self.overflow = not torch.isfinite(norm).item()
        if self.overflow:
            return None
        return super().step(closure)


def _clip_tensor_parallel_(params: list[torch.Tensor], max_norm: float, tp_group) -> torch.Tensor:
    """Scale the gradients of ``params`` (this rank's, tensor-parallel shards among them) so that the whole
    model's gradient norm is at most ``max_norm``; return that norm (the same on every rank of ``tp_group``)."""
    import torch.distributed as dist

    counted = [p.grad for p in params
               if getattr(p, "tensor_model_parallel", False) or dist.get_rank(group=tp_group) == 0]
    squares = torch.zeros((), dtype=torch.float32, device=params[0].grad.device if params else None)
    for grad in counted:  # on the gradients' device: NCCL reduces CUDA tensors only
        squares += grad.detach().float().pow(2).sum()
    dist.all_reduce(squares, group=tp_group)
    norm = squares.sqrt()
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for p in params:
        p.grad.mul_(coef.to(p.grad.device, p.grad.dtype))
    return norm


def uses_guarded_optimizer(cfg: Config) -> bool:
    return cfg.parallel.zero_stage == 0 and cfg.train.precision == "fp32"


def build_optimizer(model: torch.nn.Module, cfg: Config, mpu=None) -> torch.optim.Optimizer:
    """torch AdamW (no JIT-compiled DeepSpeed optimizer, so it runs anywhere) over :func:`param_groups`."""
    t = cfg.train
    kwargs = dict(lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    groups = param_groups(model, t.weight_decay)
    if uses_guarded_optimizer(cfg):
        tp_group = mpu.get_model_parallel_group() if mpu and mpu.get_model_parallel_world_size() > 1 else None
        return GuardedAdamW(groups, max_grad_norm=t.grad_clip, tp_group=tp_group, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: Config) -> LambdaLR:
    t = cfg.train
    return LambdaLR(optimizer, lr_lambda(lr=t.lr, min_lr=t.min_lr, warmup_steps=t.warmup_steps(),
                                         max_steps=t.schedule_steps(), schedule=t.lr_schedule))


def build_engine(model: torch.nn.Module, cfg: Config, stage: Stage, dp: int, mpu=None):
    """The DeepSpeed engine for ``model`` with the geometry of ``stage`` on ``dp`` data-parallel ranks.

    ``mpu``: :class:`parallel.SequenceDataParallelMPU` with sequence parallelism (ZeRO then partitions over all
    dp x sp ranks and gradients are summed over SP, averaged over DP); ``None`` otherwise."""
    import deepspeed

    optimizer = build_optimizer(model, cfg, mpu)
    scheduler = build_lr_scheduler(optimizer, cfg)
    ds_config = build_ds_config(cfg, stage, dp)
    if uses_guarded_optimizer(cfg):
        ds_config["gradient_clipping"] = 0.0  # GuardedAdamW clips (and records the norm DeepSpeed would drop)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config, dist_init_required=False, mpu=mpu)
    return engine


def set_stage_geometry(engine, stage: Stage, dp: int) -> None:
    """Switch the engine to ``stage``'s micro-batch and accumulation (same tokens per optimizer step)."""
    engine.set_train_micro_batch_size(stage.micro_batch)
    engine.set_train_batch_size(stage.micro_batch * stage.grad_accum * dp)

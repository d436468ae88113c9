"""DeepSpeed's config, generated from ours and merged with the raw ``deepspeed:`` section.

Generated: ZeRO stage, precision (fp32 or bf16 with fp32 master weights), gradient clipping, and the batch
geometry of the first warm-up stage (micro-batch per rank x accumulation x data-parallel size); the trainer
changes the geometry between stages. The optimizer and LR schedule are passed to ``deepspeed.initialize`` as
objects, so the generated config names neither. The raw section is merged last, key by key (nested mappings
merge, other values replace), so it can set anything DeepSpeed understands, e.g. ``zero_optimization:
{overlap_comm: true}``.
"""

from __future__ import annotations

import copy
from typing import Any

from pretrain.config import Config
from pretrain.schedule import Stage


def build_ds_config(cfg: Config, stage: Stage, dp: int) -> dict[str, Any]:
    """The DeepSpeed config dictionary for a run whose first stage is ``stage`` on ``dp`` data-parallel ranks."""
    generated: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": stage.micro_batch,
        "gradient_accumulation_steps": stage.grad_accum,
        "train_batch_size": stage.micro_batch * stage.grad_accum * dp,
        "gradient_clipping": cfg.train.grad_clip,
        "zero_optimization": {"stage": cfg.parallel.zero_stage},
        "zero_allow_untested_optimizer": False,
        # Progress lines come from our own logger, not DeepSpeed's.
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }
    if cfg.train.precision == "bf16":
        # check_grad_overflow: a non-finite gradient skips the update instead of poisoning the weights.
        generated["bf16"] = {"enabled": True, "check_grad_overflow": True}
    return merge(generated, cfg.deepspeed)


def merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra`` recursively (a new dictionary; the inputs are left alone)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out

"""The language-model loss: next-token cross-entropy weighted by the stream's ``loss_mask``.

``loss_mask`` is 0 where the target is N or padding and may be below 1 on soft-masked (repeat) bases
(``data.soft_mask_weight``). Cross-entropy is taken over the padded vocabulary in fp32.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (fp32), shape of ``labels``, from ``logits`` [B, L, V]."""
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor, sp_group=None) -> torch.Tensor:
    """Mask-weighted mean cross-entropy of one micro-batch (0 when the mask is all zero).

    With sequence parallelism (``sp_group``: the ranks holding slices of the same windows) the mean is over the
    tokens of the whole group: this rank returns its slice's weighted sum divided by the group's total weight,
    so the group's losses add up to the micro-batch mean and their gradients, summed over the group (DeepSpeed
    sums over SP and averages over DP), are the single-process gradient.
    """
    weight = loss_mask.to(torch.float32)
    total = weight.sum()
    if sp_group is not None:
        total = total.detach().clone()
        torch.distributed.all_reduce(total, group=sp_group)
    return (token_losses(logits, labels) * weight).sum() / total.clamp_min(1e-8)


@torch.no_grad()
def eval_sums(forward: Callable[[torch.Tensor], torch.Tensor], batches: Iterable[dict], device: torch.device,
              max_batches: int | None = None) -> tuple[float, float, int]:
    """``(sum of weighted token losses, sum of weights, batches)`` over ``batches`` (at most ``max_batches``).

    Perplexity is ``exp(loss_sum / weight_sum)`` after summing both over every rank.
    """
    loss_sum, weight_sum, seen = 0.0, 0.0, 0
    for batch in batches:
        if max_batches is not None and seen >= max_batches:
            break
        labels = batch["labels"].to(device)
        weight = batch["loss_mask"].to(device=device, dtype=torch.float32)
        losses = token_losses(forward(batch["input_ids"].to(device)), labels)
        loss_sum += float((losses.double() * weight).sum())
        weight_sum += float(weight.double().sum())
        seen += 1
    return loss_sum, weight_sum, seen

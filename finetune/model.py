"""The classifier: a DNA language model backbone, optional soft prompts, pooling and a linear head.

::

    x = E[ids]                                   (B, L, d)   token embeddings of the backbone
    x = [P ; x]                                  (B, k+L, d) soft prompts P (k, d) prepended (HyenaDNA §4.4)
    h = backbone blocks + final norm (x)         (B, k+L, d)
    z = mean of h over real tokens (padding and prompts excluded)   or   h at the last real token
    logits = W dropout(z) + b                    (B, C)

Tuning modes: ``full`` trains everything; ``frozen`` and ``soft_prompt`` freeze the backbone
(``requires_grad=False``, so the optimizer never holds its parameters) and train the head (and the prompts).
Soft prompts start as copies of randomly chosen base embeddings (A/C/G/T rows), so they begin inside the
distribution the frozen backbone was trained on.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from models.tokenizer import A_ID, T_ID, VOCAB_SIZE


class SequenceClassifier(nn.Module):
    """``forward(input_ids (B, L), attention_mask (B, L) bool) -> logits (B, num_classes)``."""

    def __init__(self, backbone: nn.Module, num_classes: int, *, pooling: str = "mean", mode: str = "full",
                 num_prompts: int = 0, dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.backbone, self.pooling, self.mode = backbone, pooling, mode
        d = backbone.config.d_model
        self.prompt = None
        if num_prompts:
            gen = torch.Generator().manual_seed(seed)
            rows = torch.randint(A_ID, T_ID + 1, (num_prompts,), generator=gen)
            self.prompt = nn.Parameter(backbone.embedding.weight.detach()[rows].clone().float())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(d, num_classes)
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed + 1)
            self.head.weight.normal_(0.0, backbone.config.initializer_range, generator=gen)
            self.head.bias.zero_()
        if mode != "full":
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @property
    def num_prompts(self) -> int:
        return 0 if self.prompt is None else self.prompt.shape[0]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        if self.prompt is None:
            hidden = self.backbone.hidden_states(input_ids)
        else:
            self.backbone.check_input_ids(input_ids)
            embeds = self.backbone.embedding(input_ids)
            prompt = self.prompt.to(embeds.dtype).expand(input_ids.shape[0], -1, -1)
            hidden = self.backbone.hidden_states(inputs_embeds=torch.cat([prompt, embeds], dim=1))
            hidden = hidden[:, self.num_prompts:]
        pooled = pool(hidden.float(), attention_mask, self.pooling)  # summed in fp32, then the head's dtype (bf16 runs)
        return self.head(self.dropout(pooled.to(self.head.weight.dtype)))


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, d) -> (B, d): ``mean`` over positions where ``mask`` is true, or ``last`` true position."""
    if how == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if how == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, torch.full_like(positions, -1)).max(dim=1).values.clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean' or 'last', got {how!r}")


def load_backbone(cfg) -> nn.Module:
    """The language model named by ``cfg.backbone`` (``cfg.model`` for a random one), float32 on the CPU.

    Raises ``ValueError`` if it cannot be read or does not use the character vocabulary of ``models.tokenizer``.
    """
    b = cfg.backbone
    path = Path(b.path) if b.path else None
    if path is not None and not path.exists():
        raise ValueError(f"backbone.path {path} does not exist")
    if b.source == "random":
        from models import build_model

        model = build_model(cfg.model)
    elif b.source == "pretrained":
        from models import from_pretrained

        model = from_pretrained(path)
    elif b.source == "checkpoint":
        from pretrain.export import load_checkpoint_model

        model, _ = load_checkpoint_model(path)
    elif b.source == "hyenadna":
        from models.convert import convert_hyenadna

        model = convert_hyenadna(path, trust_pickle=b.trust_pickle)
    else:
        from models.convert import convert_mamba_ssm

        model = convert_mamba_ssm(path, l_max=b.l_max or 1 << 20, trust_pickle=b.trust_pickle)
    vocab = model.config.vocab_size
    if vocab != VOCAB_SIZE:
        raise ValueError(f"the backbone from {b.path or 'model'} has a vocabulary of {vocab} tokens, but the "
                         f"fine-tuning data is tokenized with the {VOCAB_SIZE}-token character vocabulary of "
                         f"models.tokenizer: a head on it would read the wrong embeddings; use a backbone trained "
                         f"with this tokenizer")
    return model.float()

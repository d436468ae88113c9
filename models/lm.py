"""The DNA language model: embedding -> pre-norm residual blocks -> final norm -> tied LM head.

Every architecture uses the same skeleton (the math of flash-attn's prenorm ``Block`` used by HyenaDNA and of
mamba_ssm's ``Add -> Norm -> Mixer`` block)::

    r = dropout(E[ids])                                   # residual stream, float32 or wider if residual_in_fp32
    for each block:  r = r + dropout(mixer(norm1(r)));  r = r + dropout(mlp(norm2(r)))   (if the block has an MLP)
    logits = norm_f(r) @ E^T                              # (B, L, vocab padded to a multiple of 8)

Per architecture: hyena — LayerNorm, HyenaOperator, GELU(tanh) MLP with biases; mamba — RMSNorm, Mamba mixer,
no MLP unless d_inner > 0 (then SwiGLU); transformer — RMSNorm, causal RoPE attention, SwiGLU MLP.

Initialisation follows each reference: hyena and transformer (GPT-2 style, HyenaDNA's ``_init_weights``)
draw every Linear N(0, 0.02) with zero biases and redraw ``out_proj`` / ``fc2`` at 0.02/sqrt(2·n_layer); mamba
(mamba_ssm) keeps torch's default Linear init, zeroes biases except dt_proj's, and redraws ``out_proj`` /
``fc2`` (kaiming-uniform) divided by sqrt(n_layer). Embeddings are N(0, 0.02) everywhere; the LM head is tied.
Parameters the references exclude from weight decay carry ``p._no_weight_decay = True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.attention import CausalSelfAttention
from models.config import ModelConfig
from models.hyena import HyenaOperator
from models.layers import GatedMlp, Mlp, make_norm, recompute, tag_no_weight_decay
from models.mamba import Mamba

NORM_KIND = {"hyena": "layer", "mamba": "rms", "transformer": "rms"}


class Block(nn.Module):
    """Pre-norm residual block: ``r + mixer(norm1(r))`` then, with an MLP, ``r + mlp(norm2(r))``.

    When checkpointed (``cfg.checkpoint`` true, or ``"auto"`` and :meth:`ModelConfig.use_checkpoint` says the
    activations of this input would exceed the budget; decided at every call from the input's shape), the
    block runs under :func:`models.layers.recompute` as two pieces, norm1+mixer and norm2+MLP
    (HyenaDNA's checkpoint_mixer / checkpoint_mlp): only the two piece inputs are kept, and the backward of one
    piece never holds the activations of the other.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        kind, d = NORM_KIND[cfg.arch], cfg.d_model
        self.config = cfg
        self.norm1 = make_norm(kind, d, cfg.norm_eps)
        self.mixer = _make_mixer(cfg)
        self.norm2, self.mlp = None, None
        if cfg.mlp_width > 0:
            self.norm2 = make_norm(kind, d, cfg.norm_eps)
            self.mlp = Mlp(d, cfg.mlp_width) if cfg.arch == "hyena" else GatedMlp(d, cfg.mlp_width)
        self.dropout = nn.Dropout(cfg.resid_dropout)

    def forward(self, residual: torch.Tensor) -> torch.Tensor:
        # Adding a half-precision output to a float32 residual keeps the stream in float32 (type promotion),
        # and float64 stays float64.
        residual = residual + self._run(self._mix, residual)
        if self.mlp is not None:
            residual = residual + self._run(self._feed_forward, residual)
        return residual

    def use_checkpoint(self, batch: int, seq_len: int) -> bool:
        """Whether a (batch, seq_len) input is run checkpointed (see :meth:`ModelConfig.use_checkpoint`)."""
        itemsize = max(self.norm1.weight.element_size(), 4)  # compute in float32 or wider
        return self.config.use_checkpoint(batch, seq_len, itemsize)

    def _run(self, piece, residual: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and self.use_checkpoint(residual.shape[0], residual.shape[1]):
            return recompute(piece, residual, self._piece_params(piece))
        return piece(residual)

    def _piece_params(self, piece):
        mods = (self.norm1, self.mixer) if piece == self._mix else (self.norm2, self.mlp)
        return [p for m in mods for p in m.parameters()]

    def _mix(self, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.mixer(self.norm1(residual.to(self.norm1.weight.dtype))))

    def _feed_forward(self, residual: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.mlp(self.norm2(residual.to(self.norm2.weight.dtype))))


def _make_mixer(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "hyena":
        return HyenaOperator(cfg.d_model, cfg.l_max, cfg.hyena)
    if cfg.arch == "mamba":
        return Mamba(cfg.d_model, cfg.mamba, cfg.dt_rank)
    return CausalSelfAttention(cfg.d_model, cfg.transformer.n_head, cfg.transformer.rope_theta)


class DNALM(nn.Module):
    """Causal DNA language model. ``forward(input_ids (B, L)) -> logits (B, L, padded vocab)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg.validate()
        vocab, d = cfg.padded_vocab_size, cfg.d_model
        self.embedding = nn.Embedding(vocab, d)
        self.embed_dropout = nn.Dropout(cfg.embed_dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(NORM_KIND[cfg.arch], d, cfg.norm_eps)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.embedding.weight  # tied
        tag_no_weight_decay(self)
        _init_weights(self, cfg)

    def check_input_ids(self, input_ids: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``input_ids`` is an integer (B, L) tensor, 1 <= L <= l_max, ids in vocab."""
        cfg = self.config
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor of shape (batch, length), got "
                             f"{input_ids.dtype} {tuple(input_ids.shape)}")
        L = input_ids.shape[1]
        if not 1 <= L <= cfg.l_max:
            raise ValueError(f"sequence length {L} is outside [1, model.l_max={cfg.l_max}]: use shorter windows "
                             f"or a model built with a larger l_max")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"token ids must lie in [0, {cfg.vocab_size}) (models.tokenizer ids), got values "
                             f"in [{lo}, {hi}]")

    def hidden_states(self, input_ids: torch.Tensor | None = None,
                      inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Final-norm hidden states (B, L, d) from token ids, or from embeddings (B, L, d) (soft prompts)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            self.check_input_ids(input_ids)
            inputs_embeds = self.embedding(input_ids)
        elif inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.d_model:
            raise ValueError(f"inputs_embeds must be (batch, length, {self.config.d_model}), "
                             f"got {tuple(inputs_embeds.shape)}")
        elif inputs_embeds.shape[1] > self.config.l_max:
            raise ValueError(f"sequence length {inputs_embeds.shape[1]} exceeds model.l_max={self.config.l_max}")
        residual = self.embed_dropout(inputs_embeds)
        if self.config.residual_in_fp32:
            residual = residual.to(torch.promote_types(residual.dtype, torch.float32))
        for layer in self.layers:
            residual = layer(residual)
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids))

    def flops_per_token(self, seq_len: int) -> float:
        """Analytic training FLOPs (forward + backward) per token at length ``seq_len`` (see models.flops)."""
        from models.flops import flops_per_token

        return flops_per_token(self.config, seq_len)

    def num_parameters(self) -> int:
        """Unique trainable parameters (tied / shared tensors counted once; buffers excluded)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (see :func:`models.from_pretrained`)."""
        from models.io import save_pretrained

        save_pretrained(self, directory)


def build_model(cfg: ModelConfig | dict) -> DNALM:
    """A freshly initialised :class:`DNALM` from a :class:`ModelConfig` or a dict of its fields."""
    if isinstance(cfg, dict):
        from models.config import from_dict

        cfg = from_dict(ModelConfig, cfg, path="model")
    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"build_model needs a ModelConfig or a dict, got {type(cfg).__name__}")
    return DNALM(cfg)


@torch.no_grad()
def _init_weights(model: DNALM, cfg: ModelConfig) -> None:
    std, gpt2_style = cfg.initializer_range, cfg.arch != "mamba"
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.Linear) and module is not model.lm_head:
            if gpt2_style:
                nn.init.normal_(module.weight, std=std)
            if module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                nn.init.zeros_(module.bias)
    for name, p in model.named_parameters():
        if name.endswith(("mixer.out_proj.weight", "mlp.fc2.weight")):
            if gpt2_style:
                nn.init.normal_(p, std=std / math.sqrt(2 * cfg.n_layer))
            else:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                p /= math.sqrt(cfg.n_layer)

"""Stand-in for the public HyenaDNA training code's model, in plain torch: the baseline of bench/cpu_speed.py.

Written from the published equations (``models/hyena.py``'s docstring, ``data/sample/golden/README.md`` §3) with
the released code's operation order and module names (``HazyResearch/hyena-dna`` ``src/models/sequence/hyena.py``:
``HyenaOperator`` order 2, ``HyenaFilter``, ``PositionalEmbedding``, ``ExponentialModulation``, ``Sin``,
``fftconv_ref``; ``long_conv_lm.py``'s ``LMBackbone`` / ``ConvLMHeadModel``; flash-attn 1.0.7's prenorm
``Block`` and ``Mlp``, their unfused CPU path), so the reference's ``weights.ckpt`` loads as is (``model.``
prefix stripped). What it does, step by step, is what the reference does on CPU:

* the input projection ``in_proj`` d -> 3d, a (B, L, 3d) -> (B, 3d, L) view (einops ``rearrange``), then
  ``nn.Conv1d(3d, 3d, 3, groups=3d, padding=2)`` and ``[..., :L]`` (torch's depthwise conv and its autograd);
* the implicit filter: the MLP of the positional features with the shared ``Sin``, times the decay window,
  recomputed at every call, kept by autograd (no checkpointing: ``checkpoint_mixer`` / ``checkpoint_mlp`` are
  false in every released config);
* ``fftconv_ref``: ``rfft(k, 2L) / 2L``, ``rfft(u, 2L)``, ``irfft(u_f * k_f, 2L, norm="forward")[..., :L]``
  ``+ u * D`` in the 5-d (B, 1, d, 1, L) layout the reference passes, everything kept by autograd;
* gating, the (B, d, L) -> (B, L, d) view, ``out_proj``; prenorm residual block with ``nn.LayerNorm``, dropout 0,
  GELU(tanh) MLP; final LayerNorm and the tied LM head.

Nothing here is written to be slow: it is the reference's own sequence of torch calls (the real code calls these
same ops; its optional CUDA extensions — ``fused_fft_conv``, flash-attn's fused dense / dropout-add-LN — do not
exist on CPU, and the reference falls back to exactly this path). ``tests/bench/test_reference_standins.py``
checks it equal to ``models`` on the golden weights in float64 (1e-10) and to the stored golden outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def fftconv_ref(u, k, D, dropout_mask=None, gelu=True, k_rev=None):
    """hyena.py ``fftconv_ref`` (the model calls it with ``dropout_mask=None, gelu=False``)."""
    seqlen = u.shape[-1]
    fft_size = 2 * seqlen
    k_f = torch.fft.rfft(k, n=fft_size) / fft_size
    if k_rev is not None:
        k_rev_f = torch.fft.rfft(k_rev, n=fft_size) / fft_size
        k_f = k_f + k_rev_f.conj()
    u_f = torch.fft.rfft(u.to(dtype=k.dtype), n=fft_size)
    if len(u.shape) > 3:
        k_f = k_f.unsqueeze(1)
    y = torch.fft.irfft(u_f * k_f, n=fft_size, norm="forward")[..., :seqlen]
    out = y + u * D.unsqueeze(-1)
    if gelu:
        out = F.gelu(out)
    if dropout_mask is not None:
        return (out * dropout_mask[..., None]).to(dtype=u.dtype)
    return out.to(dtype=u.dtype)


class Sin(nn.Module):
    def __init__(self, dim, w=10, train_freq=True):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim)) if train_freq else w * torch.ones(1, dim)

    def forward(self, x):
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    def __init__(self, emb_dim: int, seq_len: int):
        super().__init__()
        self.seq_len = seq_len
        t = torch.linspace(0, 1, self.seq_len)[None, :, None]  # 1, L, 1
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, seq_len - 1, seq_len)[None, :, None]
        w = 2 * math.pi * t_rescaled / seq_len  # 1, L, 1
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        z = torch.cat([t, z.real, z.imag], dim=-1)
        self.register_buffer("z", z)  # lr_pos_emb 0 in the released configs: a buffer (OptimModule.register)
        self.register_buffer("t", t)

    def forward(self, L):
        return self.z[:, :L], self.t[:, :L]


class ExponentialModulation(nn.Module):
    def __init__(self, d_model, fast_decay_pct=0.3, slow_decay_pct=1.5, target=1e-2, modulate: bool = True,
                 shift: float = 0.0):
        super().__init__()
        self.modulate, self.shift = modulate, shift
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])

    def forward(self, t, x):
        if self.modulate:
            decay = torch.exp(-t * self.deltas.abs())
            x = x * (decay + self.shift)
        return x


class HyenaFilter(nn.Module):
    def __init__(self, d_model, emb_dim=5, order=64, seq_len=1024, w=10, num_inner_mlps=2, shift=0.0):
        super().__init__()
        self.d_model = d_model
        self.bias = nn.Parameter(torch.randn(self.d_model))
        act = Sin(dim=order, w=w)
        self.pos_emb = PositionalEmbedding(emb_dim, seq_len)
        self.implicit_filter = nn.Sequential(nn.Linear(emb_dim, order), act)
        for _ in range(num_inner_mlps):
            self.implicit_filter.append(nn.Linear(order, order))
            self.implicit_filter.append(act)
        self.implicit_filter.append(nn.Linear(order, d_model, bias=False))
        self.modulation = ExponentialModulation(d_model, shift=shift)

    def filter(self, L):
        z, t = self.pos_emb(L)
        h = self.implicit_filter(z)
        h = self.modulation(t, h)
        return h

    def forward(self, x, L, k=None, bias=None):
        if k is None:
            k = self.filter(L)
        k = k[0] if type(k) is tuple else k
        return fftconv_ref(x, k, bias, dropout_mask=None, gelu=False)


class HyenaOperator(nn.Module):
    """Order 2, one head, one block, inner_factor 1, activation "id", no dropout (the released configs)."""

    def __init__(self, d_model, l_max, order=2, filter_order=64, short_filter_order=3, **filter_args):
        super().__init__()
        self.d_model, self.l_max, self.order = d_model, l_max, order
        self.head_dim = d_model
        self.out_proj = nn.Linear(d_model, d_model)
        self.in_proj = nn.Linear(d_model, (order + 1) * d_model)
        total_width = d_model * (order + 1)
        self.short_filter = nn.Conv1d(total_width, total_width, short_filter_order, padding=short_filter_order - 1,
                                      groups=total_width)
        self.filter_fn = HyenaFilter(d_model * (order - 1), order=filter_order, seq_len=l_max, **filter_args)

    def forward(self, u):
        l = u.size(-2)
        l_filter = min(l, self.l_max)
        u = self.in_proj(u)
        u = u.transpose(1, 2)  # rearrange(u, 'b l d -> b d l')
        uc = self.short_filter(u)[..., :l_filter]
        # rearrange 'b (ho v) (z l) -> b ho v z l' with ho = z = 1
        uc = uc.reshape(uc.shape[0], 1, uc.shape[1], 1, uc.shape[2])
        *x, v = uc.split(self.d_model, dim=2)
        k = self.filter_fn.filter(l_filter)
        # rearrange(k, 'c l (v o) -> c o v l')[0]  (c = 1, o = order - 1)
        k = k.reshape(k.shape[0], l_filter, self.head_dim, self.order - 1).permute(0, 3, 2, 1)[0]
        bias = self.filter_fn.bias.reshape(self.head_dim, self.order - 1).t()  # '(v o) -> o v'
        for o, x_i in enumerate(reversed(x[1:])):
            v = v * x_i
            v = self.filter_fn(v, l_filter, k=k[o], bias=bias[o, None, :, None])
        y = v * x[0]  # activation "id"
        y = y.reshape(y.shape[0], y.shape[2], y.shape[4]).transpose(1, 2)  # 'b h v z l -> b (z l) (h v)'
        return self.out_proj(y)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class Block(nn.Module):
    """flash-attn ``Block``, prenorm, not fused: returns (hidden_states, residual)."""

    def __init__(self, d_model, d_inner, mixer, eps=1e-5, residual_in_fp32=True):
        super().__init__()
        self.mixer = mixer
        self.norm1 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = Mlp(d_model, d_inner)
        self.norm2 = nn.LayerNorm(d_model, eps=eps)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden_states, residual=None):
        dropped = hidden_states
        residual = (dropped + residual) if residual is not None else dropped
        hidden_states = self.norm1(residual.to(dtype=self.norm1.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        hidden_states = self.mixer(hidden_states)
        residual = hidden_states + residual
        hidden_states = self.norm2(residual.to(dtype=self.norm2.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        return self.mlp(hidden_states), residual


class Embeddings(nn.Module):
    def __init__(self, d_model, vocab):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, d_model)

    def forward(self, input_ids):
        return self.word_embeddings(input_ids)


class Backbone(nn.Module):
    def __init__(self, d_model, n_layer, d_inner, vocab, l_max, eps, residual_in_fp32, layer):
        super().__init__()
        self.embeddings = Embeddings(d_model, vocab)
        self.layers = nn.ModuleList(
            Block(d_model, d_inner, HyenaOperator(d_model, l_max, **layer), eps, residual_in_fp32)
            for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model, eps=eps)

    def forward(self, input_ids):
        hidden_states, residual = self.embeddings(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual)
        residual = hidden_states + residual
        return self.ln_f(residual.to(dtype=self.ln_f.weight.dtype))


class ConvLMHeadModel(nn.Module):
    """``ConvLMHeadModel`` with Hyena layers, tied LM head. ``forward(input_ids (B, L)) -> logits (B, L, V)``."""

    def __init__(self, d_model=128, n_layer=2, d_inner=None, vocab_size=16, l_max=1026, layer_norm_epsilon=1e-5,
                 residual_in_fp32=True, emb_dim=5, filter_order=64, short_filter_order=3, w=10, num_inner_mlps=2,
                 shift=0.0):
        super().__init__()
        layer = dict(filter_order=filter_order, short_filter_order=short_filter_order, emb_dim=emb_dim, w=w,
                     num_inner_mlps=num_inner_mlps, shift=shift)
        self.backbone = Backbone(d_model, n_layer, d_inner or 4 * d_model, vocab_size, l_max, layer_norm_epsilon,
                                 residual_in_fp32, layer)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        self.lm_head.weight = self.backbone.embeddings.word_embeddings.weight

    def forward(self, input_ids):
        return self.lm_head(self.backbone(input_ids))


def from_golden(directory, residual_in_fp32: bool = True) -> ConvLMHeadModel:
    """The stand-in with the weights of a released-layout HyenaDNA directory (``config.json`` + ``weights.ckpt``)."""
    import json
    from pathlib import Path

    directory = Path(directory)
    cfg = json.loads((directory / "config.json").read_text())
    layer = cfg["layer"]
    vocab = -(-cfg.get("vocab_size", 12) // cfg.get("pad_vocab_size_multiple", 8)) * cfg.get("pad_vocab_size_multiple", 8)
    model = ConvLMHeadModel(cfg["d_model"], cfg["n_layer"], cfg.get("d_inner"), vocab, layer["l_max"],
                            cfg.get("layer_norm_epsilon", 1e-5), residual_in_fp32, layer.get("emb_dim", 3),
                            layer.get("filter_order", 64), layer.get("short_filter_order", 3), layer.get("w", 1),
                            layer.get("num_inner_mlps", 2))
    state = torch.load(directory / "weights.ckpt", weights_only=True)["state_dict"]
    state = {k.removeprefix("model."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model

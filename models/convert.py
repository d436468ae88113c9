"""Import released checkpoints: ``python -m models.convert {hyenadna,mamba_ssm} SRC --out DIR``.

- ``hyenadna``: a released HyenaDNA directory (``config.json`` + ``weights.ckpt``, PyTorch Lightning layout,
  keys prefixed ``model.``; the ``.mixer.layer.`` / ``.mlp.layer.`` keys written with gradient checkpointing
  are accepted). Its filter shift is not in the config: the training code uses 0.0 (``--filter-shift``).
- ``mamba_ssm``: a mamba_ssm directory (``config.json`` with MambaConfig fields + ``pytorch_model.bin``).

Nothing is dropped silently: config keys that would change the math and are not supported, unknown
weights, missing weights, an untied LM head, or stored buffers that differ from the ones this code rebuilds
(a different ``l_max``) raise ``ValueError``. The output is a ``from_pretrained`` directory.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from models.config import HyenaConfig, MambaConfig, ModelConfig

# HyenaDNA config keys: used | inert (training-time or kernel choices with the same math) | must equal a value
HYENA_TOP_INERT = {"fused_mlp", "fused_dropout_add_ln", "return_hidden_state", "checkpoint_mixer", "checkpoint_mlp",
                   "initializer_cfg", "fused_bias_fc", "sequence_parallel", "device", "dtype", "attn_cfg"}
HYENA_LAYER_USED = {"emb_dim", "filter_order", "l_max", "modulate", "w", "short_filter_order", "num_inner_mlps",
                    "fast_decay_pct", "slow_decay_pct", "target", "shift"}
HYENA_LAYER_INERT = {"_name_", "lr", "wd", "lr_pos_emb", "modulation_lr", "fused_fft_conv", "jit_filter",
                     "fused_bias_fc", "return_state", "local_order"}  # local_order is swallowed by **kwargs
HYENA_LAYER_FIXED = {"order": 2, "num_heads": 1, "inner_factor": 1, "num_blocks": 1, "outer_mixing": False,
                     "post_order_ffn": False, "activation": "id", "normalized": False, "bias": True,
                     "dropout": 0.0, "filter_dropout": 0.0, "filter_cls": "hyena-filter", "train_freq": True}
MAMBA_SSM_USED = {"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "dt_scale",
                  "conv_bias", "bias"}
MAMBA_SSM_INERT = {"dt_init", "use_fast_path", "layer", "layer_idx", "device", "dtype"}


def _unsupported(what: str, keys) -> None:
    if keys:
        raise ValueError(f"{what}: unsupported keys {sorted(keys)} (they would change the model; not imported)")


def hyenadna_config(released: dict, filter_shift: float = 0.0) -> ModelConfig:
    """The :class:`ModelConfig` of a released HyenaDNA ``config.json`` dict."""
    layer = dict(released.get("layer") or {})
    if layer.get("_name_", "hyena") != "hyena":
        raise ValueError(f"hyenadna config: layer._name_ is {layer['_name_']!r}; only 'hyena' layers are supported")
    for key, value in HYENA_LAYER_FIXED.items():
        if key in layer and layer[key] != value:
            raise ValueError(f"hyenadna config: layer.{key}={layer[key]!r} is not supported (only {value!r})")
    _unsupported("hyenadna config layer", set(layer) - HYENA_LAYER_USED - HYENA_LAYER_INERT - set(HYENA_LAYER_FIXED))
    if released.get("attn_layer_idx"):
        raise ValueError("hyenadna config: attention layers (attn_layer_idx) are not supported")
    if released.get("max_position_embeddings", 0):
        raise ValueError("hyenadna config: learned position embeddings (max_position_embeddings > 0) are not supported")
    used = {"d_model", "n_layer", "d_inner", "vocab_size", "resid_dropout", "embed_dropout", "residual_in_fp32",
            "pad_vocab_size_multiple", "layer_norm_epsilon", "layer", "attn_layer_idx", "max_position_embeddings"}
    _unsupported("hyenadna config", set(released) - used - HYENA_TOP_INERT)
    hyena = HyenaConfig(**{k: layer[k] for k in HYENA_LAYER_USED - {"l_max"} if k in layer})
    if "shift" not in layer:
        hyena.shift = filter_shift
    d = released["d_model"]
    return ModelConfig(
        arch="hyena", d_model=d, n_layer=released["n_layer"], d_inner=released.get("d_inner") or 4 * d,
        vocab_size=released.get("vocab_size", 12), pad_vocab_size_multiple=released.get("pad_vocab_size_multiple", 8),
        l_max=layer["l_max"], embed_dropout=released.get("embed_dropout", 0.0),
        resid_dropout=released.get("resid_dropout", 0.0), norm_eps=released.get("layer_norm_epsilon", 1e-5),
        residual_in_fp32=released.get("residual_in_fp32", True), hyena=hyena,
    ).validate()


def mamba_ssm_config(released: dict, l_max: int = 1 << 20) -> ModelConfig:
    """The :class:`ModelConfig` of a mamba_ssm ``config.json`` (MambaConfig fields) dict."""
    ssm = dict(released.get("ssm_cfg") or {})
    if ssm.get("layer", "Mamba1") != "Mamba1":
        raise ValueError(f"mamba_ssm config: ssm_cfg.layer={ssm['layer']!r}; only Mamba1 is supported")
    _unsupported("mamba_ssm config ssm_cfg", set(ssm) - MAMBA_SSM_USED - MAMBA_SSM_INERT)
    if released.get("attn_layer_idx"):
        raise ValueError("mamba_ssm config: attention layers (attn_layer_idx) are not supported")
    if not released.get("rms_norm", True):
        raise ValueError("mamba_ssm config: rms_norm=false (LayerNorm blocks) is not supported")
    if not released.get("tie_embeddings", True):
        raise ValueError("mamba_ssm config: tie_embeddings=false is not supported (the LM head is tied)")
    used = {"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx", "attn_cfg",
            "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple", "tie_embeddings"}
    _unsupported("mamba_ssm config", set(released) - used)
    mamba = MambaConfig(**{k: ssm[k] for k in MAMBA_SSM_USED if k in ssm})
    if mamba.dt_rank == "auto":
        mamba.dt_rank = None
    return ModelConfig(
        arch="mamba", d_model=released["d_model"], n_layer=released["n_layer"],
        d_inner=released.get("d_intermediate", 0), vocab_size=released.get("vocab_size", 12),
        pad_vocab_size_multiple=released.get("pad_vocab_size_multiple", 8), l_max=l_max,
        residual_in_fp32=released.get("residual_in_fp32", True), mamba=mamba,
    ).validate()


def hyenadna_key(name: str) -> str | None:
    """Our parameter name for a HyenaDNA ``named_parameters`` / state-dict name (``model.`` already removed)."""
    name = name.replace(".mixer.layer.", ".mixer.").replace(".mlp.layer.", ".mlp.")
    if name == "backbone.embeddings.word_embeddings.weight":
        return "embedding.weight"
    if name.startswith("backbone.ln_f."):
        return "norm_f." + name[len("backbone.ln_f."):]
    if name.startswith("backbone.layers."):
        return name[len("backbone."):]
    return name if name == "lm_head.weight" else None


def mamba_ssm_key(name: str) -> str | None:
    """Our parameter name for a mamba_ssm ``MambaLMHeadModel`` parameter / state-dict name."""
    if name == "backbone.embedding.weight":
        return "embedding.weight"
    if name == "backbone.norm_f.weight":
        return "norm_f.weight"
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.(norm|norm2|mixer|mlp)\.(.+)", name)
    if m:
        part = "norm1" if m.group(2) == "norm" else m.group(2)
        return f"layers.{m.group(1)}.{part}.{m.group(3)}"
    return name if name == "lm_head.weight" else None


def load_mapped(model, state: dict, to_ours) -> None:
    """Copy ``state`` (reference names) into ``model`` through ``to_ours``; strict, with checked buffers/aliases."""
    ours = model.state_dict(keep_vars=True)  # parameters, aliases (tied head, shared Sin) under every name
    buffers = dict(model.named_buffers())  # deterministic, rebuilt from the config, not in our state dict
    mapped, unknown = {}, []
    for name, tensor in state.items():
        key = to_ours(name)
        if key in buffers:
            expect = buffers[key]
            if tensor.shape != expect.shape or not torch.equal(tensor.to(expect.dtype), expect):
                raise ValueError(f"stored buffer {name} {tuple(tensor.shape)} differs from the one rebuilt from the "
                                 f"config {tuple(expect.shape)}: check l_max / emb_dim in config.json")
        elif key in ours:
            mapped[key] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"weights not recognised (not imported): {sorted(unknown)}")
    _check_aliases(ours, mapped)
    missing = sorted(k for k in ours if k not in mapped and not _alias_present(ours, k, mapped))
    if missing:
        raise ValueError(f"weights missing from the checkpoint: {missing}")
    with torch.no_grad():
        for key, tensor in mapped.items():
            if ours[key].shape != tensor.shape:
                raise ValueError(f"{key}: checkpoint shape {tuple(tensor.shape)} != model shape "
                                 f"{tuple(ours[key].shape)}")
            ours[key].copy_(tensor)


def _alias_present(ours: dict, key: str, mapped: dict) -> bool:
    """True if another name of the same tensor as ``key`` was loaded (e.g. the tied head absent from a file)."""
    return any(k in mapped and ours[k] is ours[key] for k in ours)


def _check_aliases(ours: dict, mapped: dict) -> None:
    """Keys that name one tensor in our model (tied head, the shared Sin) must carry equal values."""
    by_storage = {}
    for key, t in ours.items():
        by_storage.setdefault(id(t), []).append(key)
    for keys in by_storage.values():
        present = [k for k in keys if k in mapped]
        for k in present[1:]:
            if not torch.equal(mapped[k], mapped[present[0]]):
                raise ValueError(f"{k} and {present[0]} are one tensor in this model (tied/shared) but differ in "
                                 f"the checkpoint; untied weights are not supported")


def convert_hyenadna(src, filter_shift: float = 0.0, trust_pickle: bool = False):
    """A :class:`models.DNALM` (float32) from a released HyenaDNA checkpoint directory."""
    from models.lm import DNALM

    src = Path(src)
    cfg = hyenadna_config(_read_json(src / "config.json"), filter_shift)
    ckpt = _torch_load(src / "weights.ckpt", trust_pickle)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{src / 'weights.ckpt'}: expected a dict with a 'state_dict' entry")
    if all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    model = DNALM(cfg)
    load_mapped(model, state, hyenadna_key)
    return model


def convert_mamba_ssm(src, l_max: int = 1 << 20, trust_pickle: bool = False):
    """A :class:`models.DNALM` (float32) from a mamba_ssm checkpoint directory."""
    from models.lm import DNALM

    src = Path(src)
    cfg = mamba_ssm_config(_read_json(src / "config.json"), l_max)
    state = _torch_load(src / "pytorch_model.bin", trust_pickle)
    model = DNALM(cfg)
    load_mapped(model, state, mamba_ssm_key)
    return model


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path} not found")
    return json.loads(path.read_text())


def _torch_load(path: Path, trust_pickle: bool):
    if not path.is_file():
        raise ValueError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises UnpicklingError / RuntimeError variants here
        if trust_pickle:
            raise
        raise ValueError(f"{path} holds Python objects besides tensors ({type(err).__name__}); if you trust the "
                         f"file, rerun with --trust-pickle") from err


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=["hyenadna", "mamba_ssm"])
    parser.add_argument("src", help="checkpoint directory")
    parser.add_argument("--out", required=True, help="output directory (config.json + model.safetensors)")
    parser.add_argument("--filter-shift", type=float, default=0.0, help="hyenadna: decay-window shift (0.0)")
    parser.add_argument("--l-max", type=int, default=1 << 20, help="mamba_ssm: longest accepted input (2^20)")
    parser.add_argument("--trust-pickle", action="store_true", help="allow non-tensor objects in the checkpoint")
    args = parser.parse_args(argv)
    try:
        if args.source == "hyenadna":
            model = convert_hyenadna(args.src, args.filter_shift, args.trust_pickle)
        else:
            model = convert_mamba_ssm(args.src, args.l_max, args.trust_pickle)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    model.save_pretrained(args.out)
    cfg = model.config
    print(f"wrote {args.out}: {cfg.arch} d_model={cfg.d_model} n_layer={cfg.n_layer} l_max={cfg.l_max} "
          f"parameters={model.num_parameters():,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

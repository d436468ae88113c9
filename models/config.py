"""Model configuration (a plain dataclass tree) and :func:`from_dict`, the checked dict -> dataclass builder.

``ModelConfig`` holds what every architecture shares; ``hyena`` / ``mamba`` / ``transformer`` hold the knobs of
one architecture each (only the one named by ``arch`` is used). ``validate()`` raises ``ValueError`` naming the
field and its allowed range. :func:`from_dict` is generic (nested dataclasses, ``Optional`` / unions, ``list``,
``dict``, ``Literal``, ``Any``; an int is accepted where a float is expected) and is reused for the whole
training configuration.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, TypeVar, Union

ARCHS = ("hyena", "mamba", "transformer")
# Floats kept for the backward per token, per layer and per d_model unit by one block without checkpointing
# (float32 CPU step; mamba's scales with expand / 2). See ModelConfig.use_checkpoint. hyena: 15.15 counted by
# `python bench/cpu_speed.py --saved-floats` (every tensor autograd keeps, d_model 128 x 2 layers, L = 2^12),
# rounded up; the others measured with bench/cpu_speed.py's step memory.
ACTIVATION_FLOATS = {"hyena": 16, "mamba": 24, "transformer": 16}


@dataclass
class HyenaConfig:
    """HyenaDNA operator of order 2 (defaults: the released HyenaDNA configs and training code)."""

    emb_dim: int = 5  # positional features of the implicit filter: [t, cos(f w), -sin(f w)]; odd, >= 3
    filter_order: int = 64  # width of the implicit filter MLP
    num_inner_mlps: int = 2  # hidden Linear+Sin layers after the first one
    short_filter_order: int = 3  # causal depthwise short conv width
    w: float = 10.0  # initial frequency of the (shared, learnable) Sin activation
    shift: float = 0.0  # added to the decay window; the training code uses 0.0, the standalone/HF port 0.05
    modulate: bool = True  # multiply the filter by the exponential decay window
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2  # decay window reaches `target` after slow..fast_decay_pct of l_max


@dataclass
class MambaConfig:
    """Mamba-1 mixer (mamba_ssm defaults)."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: Optional[int] = None  # None: ceil(d_model / 16)
    dt_min: float = 1e-3
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    conv_bias: bool = True
    bias: bool = False


@dataclass
class TransformerConfig:
    """Transformer++ baseline: RoPE, SwiGLU, RMSNorm, causal scaled-dot-product attention."""

    n_head: int = 8
    rope_theta: float = 10000.0


@dataclass
class ModelConfig:
    """A DNA language model: ``arch`` picks the mixer; the rest is shared (see the per-arch dataclasses).

    ``d_inner`` is the width of the position-wise MLP of each block: ``None`` means the architecture's default
    (hyena: 4·d_model; transformer: the SwiGLU width 8/3·d_model rounded up to a multiple of 64; mamba: 0, no
    MLP, as in mamba_ssm's ``d_intermediate=0``). ``l_max`` is the longest input accepted (Hyena filters
    are defined on it). The vocabulary is padded to a multiple of ``pad_vocab_size_multiple`` (12 -> 16).

    ``checkpoint``: activation checkpointing of every block (norm + mixer and norm + MLP recomputed in the
    backward): ``true``, ``false``, or ``"auto"`` (default), decided at each forward from the input's shape:
    on only when :meth:`activation_bytes` (what the blocks would keep for the backward) exceeds
    ``checkpoint_budget_gb`` (8 GiB: a Hyena of d_model 128 × 2 layers in float32 turns it on past 2^19 tokens
    per window at batch 1), so windows whose activations fit never pay for the recomputation.
    ``checkpoint_activations`` is the former boolean key, still read (it wins when set; giving both with
    different values is an error).
    """

    arch: str = "hyena"
    d_model: int = 128
    n_layer: int = 2
    d_inner: Optional[int] = None
    vocab_size: int = 12
    pad_vocab_size_multiple: int = 8
    l_max: int = 1024
    embed_dropout: float = 0.0
    resid_dropout: float = 0.0
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    residual_in_fp32: bool = True
    checkpoint: Union[bool, Literal["auto"]] = "auto"
    checkpoint_budget_gb: float = 8.0
    checkpoint_activations: Optional[bool] = None  # the former name of `checkpoint` (read from older configs)
    hyena: HyenaConfig = field(default_factory=HyenaConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return -(-self.vocab_size // m) * m

    @property
    def mlp_width(self) -> int:
        """The resolved ``d_inner`` (0 = no MLP)."""
        if self.d_inner is not None:
            return self.d_inner
        if self.arch == "hyena":
            return 4 * self.d_model
        if self.arch == "transformer":
            return -(-(8 * self.d_model) // (3 * 64)) * 64
        return 0

    @property
    def checkpoint_mode(self) -> Union[bool, str]:
        """``checkpoint`` resolved against its former name ``checkpoint_activations`` (which wins when set)."""
        return self.checkpoint if self.checkpoint_activations is None else self.checkpoint_activations

    def activation_bytes(self, batch: int, seq_len: int, itemsize: int = 4) -> int:
        """Estimated bytes the blocks keep for the backward without checkpointing (``ACTIVATION_FLOATS`` per
        token, layer and d_model, measured on CPU in float32; the residual stream itself is not counted)."""
        per = ACTIVATION_FLOATS[self.arch] * self.d_model
        if self.arch == "mamba":
            per *= self.mamba.expand / 2
        return int(per * self.n_layer * batch * seq_len * itemsize)

    def use_checkpoint(self, batch: int, seq_len: int, itemsize: int = 4) -> bool:
        """Whether the blocks are checkpointed for a (batch, seq_len) input: ``checkpoint`` true / false as
        given; ``"auto"``: only when :meth:`activation_bytes` exceeds ``checkpoint_budget_gb`` (so short windows
        never pay for the recomputation)."""
        mode = self.checkpoint_mode
        if mode != "auto":
            return bool(mode)
        return self.activation_bytes(batch, seq_len, itemsize) > self.checkpoint_budget_gb * 2**30

    @property
    def dt_rank(self) -> int:
        """Mamba's resolved ``dt_rank``."""
        return self.mamba.dt_rank if self.mamba.dt_rank is not None else math.ceil(self.d_model / 16)

    def validate(self) -> "ModelConfig":
        """Check every field; raise ``ValueError`` naming the field and its allowed range. Returns self."""
        _check(self.arch in ARCHS, "arch", f"one of {list(ARCHS)}", self.arch)
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple", "l_max"):
            _check(getattr(self, name) >= 1, name, ">= 1", getattr(self, name))
        mlp_min = 0 if self.arch == "mamba" else 1
        _check(self.mlp_width >= mlp_min, "d_inner", f">= {mlp_min} for arch {self.arch} (or null)", self.d_inner)
        for name in ("embed_dropout", "resid_dropout"):
            _check(0.0 <= getattr(self, name) < 1.0, name, "in [0, 1)", getattr(self, name))
        _check(self.norm_eps > 0, "norm_eps", "> 0", self.norm_eps)
        _check(self.initializer_range > 0, "initializer_range", "> 0", self.initializer_range)
        _check(self.checkpoint_budget_gb > 0, "checkpoint_budget_gb", "> 0", self.checkpoint_budget_gb)
        _check(self.checkpoint_activations is None or self.checkpoint == "auto"
               or self.checkpoint == self.checkpoint_activations, "checkpoint_activations",
               f"unset (it is the former name of checkpoint, which is {self.checkpoint!r})",
               self.checkpoint_activations)
        {"hyena": self._validate_hyena, "mamba": self._validate_mamba,
         "transformer": self._validate_transformer}[self.arch]()
        return self

    def _validate_hyena(self) -> None:
        h = self.hyena
        _check(h.emb_dim >= 3 and h.emb_dim % 2 == 1, "hyena.emb_dim", "an odd integer >= 3", h.emb_dim)
        for name in ("filter_order", "short_filter_order"):
            _check(getattr(h, name) >= 1, f"hyena.{name}", ">= 1", getattr(h, name))
        _check(h.num_inner_mlps >= 0, "hyena.num_inner_mlps", ">= 0", h.num_inner_mlps)
        _check(0 < h.fast_decay_pct and 0 < h.slow_decay_pct, "hyena.fast_decay_pct/slow_decay_pct", "> 0",
               (h.fast_decay_pct, h.slow_decay_pct))
        _check(0 < h.target < 1, "hyena.target", "in (0, 1)", h.target)

    def _validate_mamba(self) -> None:
        m = self.mamba
        for name in ("d_state", "d_conv", "expand"):
            _check(getattr(m, name) >= 1, f"mamba.{name}", ">= 1", getattr(m, name))
        _check(m.dt_rank is None or m.dt_rank >= 1, "mamba.dt_rank", ">= 1 (or null for ceil(d_model/16))", m.dt_rank)
        _check(0 < m.dt_min <= m.dt_max, "mamba.dt_min/dt_max", "0 < dt_min <= dt_max", (m.dt_min, m.dt_max))
        _check(m.dt_init_floor > 0, "mamba.dt_init_floor", "> 0", m.dt_init_floor)
        _check(m.dt_scale > 0, "mamba.dt_scale", "> 0", m.dt_scale)

    def _validate_transformer(self) -> None:
        t = self.transformer
        _check(t.n_head >= 1, "transformer.n_head", ">= 1", t.n_head)
        _check(self.d_model % t.n_head == 0, "transformer.n_head", f"a divisor of d_model={self.d_model}", t.n_head)
        head_dim = self.d_model // t.n_head
        _check(head_dim % 2 == 0, "transformer.n_head", f"such that d_model / n_head is even for RoPE "
               f"(d_model={self.d_model} gives head_dim {head_dim})", t.n_head)
        _check(t.rope_theta > 0, "transformer.rope_theta", "> 0", t.rope_theta)


def _check(ok: bool, name: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"model.{name} must be {allowed}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------
# Generic dict -> dataclass


T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, recursively, checking every value against the annotations.

    Unknown keys raise ``ValueError`` naming the dotted path and the nearest valid key; type mismatches
    raise ``ValueError`` naming the path, the expected and the given type. Missing keys take the field's
    default (a field without default is required). ``path`` prefixes the names in messages (e.g. ``"model"``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    where = path or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping of keys to values, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ValueError(_unknown_key(key, list(fields), path))
    kwargs = {}
    for name, f in fields.items():
        dotted = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], dotted)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{dotted} is required (no default)")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict:
    """The plain-dict form of a dataclass tree (the inverse of :func:`from_dict`)."""
    return dataclasses.asdict(obj)


def _unknown_key(key: Any, valid: list[str], path: str) -> str:
    dotted = f"{path}.{key}" if path else str(key)
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    hint = f"did you mean {(path + '.' if path else '') + close[0]!r}? " if close else ""
    return f"unknown key {dotted!r}: {hint}valid keys{' of ' + path if path else ''}: {', '.join(valid)}"


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked (and minimally converted) against annotation ``tp``."""
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(args, value, path)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{path} must be one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ValueError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__} {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(kt, k, f"{path}.{k}"): _convert(vt, v, f"{path}.{k}") for k, v in value.items()}
    return _convert_scalar(tp, value, path)


def _convert_union(args: tuple, value: Any, path: str) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise ValueError(f"{path} must not be null (expected {' | '.join(_type_name(a) for a in args)})")
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, path)
        except ValueError as err:
            errors.append(str(err))
    if len(errors) == 1:
        raise ValueError(errors[0])
    names = " | ".join(_type_name(a) for a in args)
    raise ValueError(f"{path}: expected {names}, got {type(value).__name__} {value!r}")


def _convert_scalar(tp: Any, value: Any, path: str) -> Any:
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise ValueError(f"{path}: expected int, got bool {value!r}")
    if tp is type(None):
        if value is not None:
            raise ValueError(f"{path}: expected null, got {value!r}")
        return None
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ValueError(f"{path}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value

"""models.config: ModelConfig.validate and the generic from_dict builder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from models.config import ModelConfig, from_dict, to_dict


@dataclass
class Stage:
    seq_len: int
    tokens: int | None = None


@dataclass
class Inner:
    mode: Literal["a", "b"] = "a"
    rate: float = 0.5
    shape: tuple[int, int] = (1, 2)


@dataclass
class Outer:
    name: str = "x"
    inner: Inner = field(default_factory=Inner)
    stages: list[Stage] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    limit: Optional[int] = None
    flag: bool = False


def test_nested_lists_optional_literal_and_int_to_float():
    cfg = from_dict(Outer, {"inner": {"mode": "b", "rate": 1, "shape": [3, 4]},
                            "stages": [{"seq_len": 8}, {"seq_len": 16, "tokens": 5}],
                            "extra": {"k": [1, {"z": None}]}, "limit": None, "flag": True})
    assert cfg.inner == Inner(mode="b", rate=1.0, shape=(3, 4)) and isinstance(cfg.inner.rate, float)
    assert cfg.stages == [Stage(8), Stage(16, 5)]
    assert cfg.extra == {"k": [1, {"z": None}]} and cfg.limit is None and cfg.flag is True
    assert from_dict(Outer, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "data,match",
    [
        ({"inner": {"rat": 1.0}}, r"unknown key 'inner.rat': did you mean 'inner.rate'\?"),
        ({"stagse": []}, r"unknown key 'stagse': did you mean 'stages'\?"),
        ({"zzzzz": 1}, r"unknown key 'zzzzz': valid keys: name, inner"),
        ({"inner": {"mode": "c"}}, r"inner.mode must be one of \['a', 'b'\], got 'c'"),
        ({"stages": [{"seq_len": 4}, {"seq_len": "8"}]}, r"stages\[1\].seq_len: expected int, got str"),
        ({"stages": [{}]}, r"stages\[0\].seq_len is required"),
        ({"limit": 2.5}, "limit: expected int, got float"),
        ({"limit": True}, "limit: expected int, got bool"),
        ({"flag": 1}, "flag: expected bool, got int"),
        ({"inner": {"rate": "fast"}}, "inner.rate: expected float, got str"),
        ({"inner": {"shape": [1]}}, r"inner.shape: expected 2 items"),
        ({"inner": 3}, "inner: expected a mapping"),
        ({"name": None}, "name: expected str, got NoneType"),
    ],
)
def test_bad_values_name_the_dotted_path(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(Outer, data)


def test_path_prefix_is_used_in_messages():
    with pytest.raises(ValueError, match=r"unknown key 'model.d_modle': did you mean 'model.d_model'\?"):
        from_dict(ModelConfig, {"d_modle": 3}, path="model")


def test_model_config_defaults_and_resolved_widths():
    assert ModelConfig().validate().mlp_width == 512
    assert from_dict(ModelConfig, {"arch": "mamba", "d_model": 64}).validate().mlp_width == 0
    assert from_dict(ModelConfig, {"arch": "mamba", "d_model": 64}).dt_rank == 4
    assert from_dict(ModelConfig, {"arch": "transformer", "d_model": 96}).mlp_width == 256
    assert ModelConfig(vocab_size=12, pad_vocab_size_multiple=8).padded_vocab_size == 16


@pytest.mark.parametrize(
    "data,match",
    [
        ({"arch": "rnn"}, r"model.arch must be one of \['hyena', 'mamba', 'transformer'\]"),
        ({"d_model": 0}, "model.d_model must be >= 1"),
        ({"d_inner": 0}, "model.d_inner must be >= 1 for arch hyena"),
        ({"resid_dropout": 1.0}, r"model.resid_dropout must be in \[0, 1\)"),
        ({"hyena": {"emb_dim": 4}}, "model.hyena.emb_dim must be an odd integer >= 3"),
        ({"arch": "mamba", "mamba": {"dt_min": 0.5, "dt_max": 0.1}}, "model.mamba.dt_min/dt_max"),
        ({"arch": "mamba", "mamba": {"dt_rank": 0}}, "model.mamba.dt_rank must be >= 1"),
        ({"arch": "transformer", "d_model": 96, "transformer": {"n_head": 5}}, "a divisor of d_model=96"),
        ({"arch": "transformer", "d_model": 96, "transformer": {"n_head": 32}}, "even for RoPE"),
    ],
)
def test_validate_names_field_and_range(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(ModelConfig, data).validate()

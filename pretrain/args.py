"""Command line and YAML: ``--config FILE [a.b=value ...]`` -> a checked :class:`pretrain.config.Config`.

Precedence: schema defaults < YAML file < dotted overrides. Override values are parsed as YAML scalars or flow
collections (``train.lr=3e-4``, ``train.betas=[0.9,0.95]``, ``train.warmup_stages=[{seq_len: 1024, tokens:
1e6}]``); a list element is addressed by its index (``train.warmup_stages.0.tokens=2000000``). The DeepSpeed
launcher's ``--local_rank=N`` is accepted (the rank itself is read from the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from pretrain.config import Config, build_config


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``3e-4`` / ``1e6`` as floats (YAML 1.1 wants a dot in the mantissa)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict:
    """A YAML config file as a dictionary (an empty file is an empty dictionary)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    with path.open() as f:
        data = yaml.load(f, Loader=_Loader)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of sections (run, model, data, train, ...)")
    return data


def parse_value(text: str) -> Any:
    """An override's value, read as YAML (numbers, booleans, null, lists and mappings in flow style)."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ValueError(f"cannot read the value {text!r}: {err}") from None


def apply_override(data: dict, item: str) -> None:
    """Apply one ``dotted.key=value`` override to ``data`` in place, creating missing mappings."""
    key, sep, text = item.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. train.lr=3e-4)")
    *parents, last = key.split(".")
    node: Any = data
    for depth, part in enumerate(parents):
        node = _child(node, part, ".".join(parents[: depth + 1]))
    value = parse_value(text)
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ValueError(f"override {item!r}: {'.'.join(parents)} is a value, not a section")


def _child(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where)]
    if not isinstance(node, dict):
        raise ValueError(f"override key {where!r} goes below a plain value")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ValueError(f"override key {where!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def resolve(config_path: str | Path | None, overrides: list[str]) -> Config:
    """Defaults < YAML file < overrides, checked."""
    data = load_yaml(config_path) if config_path else {}
    for item in overrides:
        apply_override(data, item)
    return build_config(data)


def parse_args(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Parse the command line of ``pretrain/main.py``: ``--config FILE [--local_rank N] [key=value ...]``."""
    parser = argparse.ArgumentParser(
        prog="pretrain/main.py",
        description="Pretrain a DNA language model. Later sources win: schema defaults < --config YAML < overrides.",
    )
    parser.add_argument("--config", help="YAML experiment file (configs/*.yaml)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; the rank is read from the environment")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args.config, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    return cfg, args


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    """The resolved config as YAML (loadable again with ``--config``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dump_yaml(cfg))
    tmp.replace(path)

"""Model layer: tokenizer, mixers (Hyena, Mamba, attention), blocks, the DNA language model, converters.

Kept import-light: ``import models.tokenizer`` must not pull in the model code (data loader workers import
it), so the public names below are resolved lazily on first use.

- ``build_model(cfg: ModelConfig | dict) -> DNALM``
- ``from_pretrained(directory, device="cpu", dtype=None) -> DNALM`` (written by ``DNALM.save_pretrained``)
- ``DNALM``, ``ModelConfig``
"""

from __future__ import annotations

import importlib

_LAZY = {
    "build_model": "models.lm",
    "DNALM": "models.lm",
    "from_pretrained": "models.io",
    "ModelConfig": "models.config",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'models' has no attribute {name!r}")

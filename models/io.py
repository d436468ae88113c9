"""``save_pretrained`` / ``from_pretrained``: a directory with ``config.json`` (the ModelConfig fields) and
``model.safetensors`` (parameters; tied and shared tensors stored once; deterministic buffers rebuilt)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from models.config import ModelConfig, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_pretrained(model, directory) -> None:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed), atomically per file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_model(model, str(tmp), metadata={"format": "pt", "arch": model.config.arch})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # the writer creates the file owner-only; give it the usual permissions
    os.replace(tmp, directory / WEIGHTS_NAME)
    tmp = directory / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps(to_dict(model.config), indent=2) + "\n")
    os.replace(tmp, directory / CONFIG_NAME)


def load_config(directory) -> ModelConfig:
    """The :class:`ModelConfig` stored in ``directory/config.json``."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{path} not found: from_pretrained needs a directory written by save_pretrained")
    data = json.loads(path.read_text())
    if "arch" not in data:
        hint = ""
        if (Path(directory) / "weights.ckpt").exists():
            hint = f" It looks like a released HyenaDNA checkpoint: run `python -m models.convert hyenadna {directory} --out DIR`."
        elif (Path(directory) / "pytorch_model.bin").exists():
            hint = f" It looks like a mamba_ssm checkpoint: run `python -m models.convert mamba_ssm {directory} --out DIR`."
        raise ValueError(f"{path} is not a longdna model config (no 'arch' key).{hint}")
    return from_dict(ModelConfig, data, path="model")


def from_pretrained(directory, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
    """Load a model written by :func:`save_pretrained` (strict: every parameter must be present and match)."""
    from models.lm import DNALM

    cfg = load_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise ValueError(f"{weights} not found: from_pretrained needs a directory written by save_pretrained")
    model = DNALM(cfg)
    missing, unexpected = load_model(model, str(weights), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{weights} does not match its config: missing {sorted(missing)}, unexpected "
                         f"{sorted(unexpected)}")
    model.to(device)
    if dtype is not None:
        model.to(dtype)
    return model

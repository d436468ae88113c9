"""What a run may start from: its own checkpoint (same model) or, with ``train.init_from``, another run's weights.

* :func:`check_resume_config` runs before anything is written: a run directory whose ``latest`` checkpoint was
  trained with another model (or ZeRO stage / precision, which fix the checkpoint's layout) is refused with the
  differing keys and the ways out, instead of DeepSpeed's ``size mismatch`` traceback from ``load_state_dict``.
* :func:`load_init_weights` gives a fresh model the weights of a checkpoint (step dir, ``checkpoints`` dir or run
  dir, any ZeRO stage) or of a ``from_pretrained`` export. Only the weights: the run starts at step 0 with a new
  optimizer, schedule and data order.
"""

from __future__ import annotations

from pathlib import Path

import yaml

# Keys that change how activations are kept in memory, not the weights or the math: free to change on resume.
RUNTIME_MODEL_KEYS = frozenset({"model.checkpoint", "model.checkpoint_budget_gb", "model.checkpoint_activations"})
# Outside the model, the keys that decide the layout of DeepSpeed's checkpoint files.
LAYOUT_KEYS = ("parallel.zero_stage", "train.precision")


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def config_differences(saved: dict, new: dict, keys=("model",)) -> list[str]:
    """``"key: A in the checkpoint, B now"`` for every key under ``keys`` (section names or full keys) that both
    configs have and that differs, activation-checkpointing keys excepted."""
    old_flat, new_flat = _flatten(saved), _flatten(new)
    wanted = [k for k in old_flat if k in new_flat and k not in RUNTIME_MODEL_KEYS
              and any(k == p or k.startswith(p + ".") for p in keys)]
    return [f"{k}: {old_flat[k]!r} in the checkpoint, {new_flat[k]!r} now"
            for k in wanted if old_flat[k] != new_flat[k]]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The step directory ``run_dir/checkpoints/latest`` names, if it exists (not verified here)."""
    try:
        name = (run_dir / "checkpoints" / "latest").read_text().strip()
    except OSError:
        return None
    path = run_dir / "checkpoints" / name
    return path if name and path.is_dir() else None


def check_resume_config(run_dir: Path, config_yaml: str) -> None:
    """Refuse to resume ``run_dir`` with a config whose model or checkpoint layout differs from its checkpoint's."""
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or not (ckpt / "config.yaml").is_file():
        return  # nothing to resume (or a damaged checkpoint, which the resume logic reports and skips)
    saved = yaml.safe_load((ckpt / "config.yaml").read_text()) or {}
    diffs = config_differences(saved, yaml.safe_load(config_yaml), keys=("model", *LAYOUT_KEYS))
    if not diffs:
        return
    raise ValueError(
        f"{run_dir} already holds a run with another configuration, so it cannot resume from {ckpt.name}:\n  "
        + "\n  ".join(diffs)
        + f"\nEither start a new run with a new run.name=... (from scratch), or start a new run from those weights "
          f"with run.name=... train.init_from={ckpt} (the model keys must then match the checkpoint's; the "
          f"optimizer, schedule and data order start afresh). To resume this run, use its own config: "
          f"{run_dir / 'config.yaml'} or {ckpt / 'config.yaml'}.")


def load_init_weights(model, source: str | Path) -> Path:
    """Copy into ``model`` the weights of ``source``: a ``from_pretrained`` export (``config.json`` +
    ``model.safetensors``) or a training checkpoint. Its model config must match ``model.config``; the return
    value is the directory the weights came from."""
    from models.config import to_dict

    path = Path(source)
    if not path.exists():
        raise ValueError(f"train.init_from={source}: no such file or directory (give a run directory, its "
                         f"checkpoints/ or a step-XXXXXXXX checkpoint, or a from_pretrained export directory)")
    if (path / "config.json").is_file():
        from models import from_pretrained

        origin, src = path, from_pretrained(path)
    else:
        from pretrain.export import load_checkpoint_model, resolve_checkpoint

        try:
            origin = resolve_checkpoint(path)
            src, _ = load_checkpoint_model(origin)
        except ValueError as err:
            raise ValueError(f"train.init_from={source}: {err}") from None
    diffs = config_differences({"model": to_dict(src.config)}, {"model": to_dict(model.config)})
    if diffs:
        raise ValueError(f"train.init_from={source}: the weights there belong to another model:\n  "
                         + "\n  ".join(diffs).replace("in the checkpoint", "there")
                         + "\nSet these model keys to the values there (or leave train.init_from unset).")
    model.load_state_dict(src.state_dict(), strict=True)
    return origin

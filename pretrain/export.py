"""Export a training checkpoint as a ``from_pretrained`` directory (``config.json`` + ``model.safetensors``).

    python -m pretrain.export CKPT --out DIR

``CKPT`` is a checkpoint (``runs/X/checkpoints/step-00001000``), a checkpoint folder (its ``latest`` is taken)
or a run directory. The checkpoint is verified against its manifest first. ZeRO checkpoints (stages 1-3, and
bf16 runs) are gathered from the optimizer's fp32 master partitions with DeepSpeed's offline reader, so no
process group and no GPU is needed; fp32 runs without ZeRO store the whole module and are read directly.
Tensor-parallel runs store one set of files per TP rank: each rank's weights are read as above (its module file in
fp32 with ZeRO 0-2, its fp32 master partitions otherwise) and joined by the split specs saved with the checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pretrain.checkpoint import verify


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory that ``path`` designates (a step dir, a checkpoints dir, or a run dir)."""
    path = Path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    if not (path / "trainer_state.pt").is_file():
        raise ValueError(f"{path} is not a training checkpoint (no trainer_state.pt); pass runs/NAME, "
                         f"runs/NAME/checkpoints or runs/NAME/checkpoints/step-XXXXXXXX")
    problem = verify(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is damaged: {problem}; export an older step-* directory instead")
    return path


def load_checkpoint_model(path: str | Path):
    """``(model, config)`` with the fp32 weights of checkpoint ``path`` (CPU, eval mode)."""
    from models import build_model
    from pretrain.args import resolve

    ckpt = resolve_checkpoint(path)
    cfg = resolve(ckpt / "config.yaml", [])
    model = build_model(cfg.model)
    model.load_state_dict(_with_aliases(model, _fp32_state_dict(ckpt, cfg)), strict=True)
    return model.float().eval(), cfg


def _with_aliases(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill in every name of a parameter shared by several modules (e.g. one Sin frequency used at several
    places of the filter MLP, the tied embedding / LM head) from whichever of its names the checkpoint has."""
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    state = dict(state)
    for names in names_of.values():
        present = [n for n in names if n in state]
        for name in names:
            if name not in state and present:
                state[name] = state[present[0]]
    return state


def _fp32_state_dict(ckpt: Path, cfg) -> dict[str, torch.Tensor]:
    if cfg.parallel.tensor > 1:
        state = _merged_tensor_parallel_state_dict(ckpt, cfg)
    elif cfg.parallel.zero_stage > 0 or cfg.train.precision != "fp32":
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    else:
        state = torch.load(ckpt / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _merged_tensor_parallel_state_dict(ckpt: Path, cfg) -> dict[str, torch.Tensor]:
    """The whole model from the per-TP-rank files of a tensor-parallel checkpoint, joined by the split specs the
    trainer saved with it. Each TP rank's weights are its module file's where those are the fp32 state (fp32 runs
    with ZeRO 0, 1 or 2), else gathered from the fp32 master partitions of its optimizer files (bf16 runs keep bf16
    module weights, rounded from the masters; ZeRO-3 module files hold no weights)."""
    from parallel import merge_tensor_parallel_state_dicts

    tp = cfg.parallel.tensor
    specs = torch.load(ckpt / "trainer_state.pt", map_location="cpu", weights_only=False).get("tensor_parallel_specs")
    modules_are_fp32 = cfg.train.precision == "fp32" and cfg.parallel.zero_stage < 3
    files = {t: sorted(ckpt.glob(f"*mp_rank_{t:02d}_*.pt")) for t in range(tp)}
    module = "mp_rank_{:02d}_model_states.pt" if modules_are_fp32 else "*mp_rank_{:02d}_optim_states.pt"
    missing = [module.format(t) for t in range(tp) if not any(f.match(module.format(t)) for f in files[t])]
    if specs is None or missing:
        raise ValueError(f"{ckpt} does not hold the {tp} tensor-parallel model files and their split specs "
                         f"(missing: {', '.join(missing) or 'tensor_parallel_specs in trainer_state.pt'})")
    if modules_are_fp32:
        shards = [torch.load(ckpt / module.format(t), map_location="cpu", weights_only=False)["module"]
                  for t in range(tp)]
    else:
        shards = [_zero_fp32_state_dict_of_tp_rank(ckpt, files[t], t) for t in range(tp)]
        # DeepSpeed's reader adds the second names of shared parameters (the tied LM head) on some ranks only:
        # keep the names every rank has; the aliases are filled in again, and strict loading catches any other gap
        common = set.intersection(*(set(shard) for shard in shards))
        shards = [{k: v for k, v in shard.items() if k in common} for shard in shards]
    return merge_tensor_parallel_state_dicts(shards, specs)


def _zero_fp32_state_dict_of_tp_rank(ckpt: Path, files: list[Path], tp_rank: int) -> dict[str, torch.Tensor]:
    """TP rank ``tp_rank``'s fp32 weights from its ZeRO files: DeepSpeed's offline reader handles one model-parallel
    rank, named ``mp_rank_00``, so it reads links to this rank's files under that name in a scratch directory."""
    import tempfile

    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with tempfile.TemporaryDirectory(prefix="tp-export-") as tmp:
        tag = Path(tmp) / ckpt.name
        tag.mkdir()
        for f in files:
            (tag / f.name.replace(f"mp_rank_{tp_rank:02d}", "mp_rank_00")).symlink_to(f.resolve())
        return get_fp32_state_dict_from_zero_checkpoint(tmp, tag=ckpt.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="runs/NAME, runs/NAME/checkpoints or a step-XXXXXXXX directory")
    parser.add_argument("--out", required=True, help="output directory for models.from_pretrained")
    args = parser.parse_args(argv)
    try:
        model, _ = load_checkpoint_model(args.checkpoint)
    except ValueError as err:
        parser.error(str(err))
    model.save_pretrained(args.out)
    print(f"exported {resolve_checkpoint(args.checkpoint)} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

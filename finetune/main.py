"""Fine-tune a DNA language model on a classification task.

    deepspeed --num_gpus N finetune/main.py --config configs/finetune/TASK.yaml [section.key=value ...]
    torchrun --nproc_per_node N finetune/main.py --config configs/finetune/TASK.yaml [...]
    python finetune/main.py --config configs/finetune/TASK.yaml [...]            # one process

The run lives in ``<run.out_dir>/<run.name>/`` (``config.yaml``, ``metrics.jsonl``, ``tb/``, ``checkpoints/``,
and ``results.json`` with the final valid and test metrics) and resumes from its ``checkpoints/latest`` by
itself. Exit codes: 0 done or stopped by SIGUSR1/SIGTERM after saving; 2 bad command line, config or data (nothing
written); 130 stopped by Ctrl-C after saving.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python finetune/main.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.config import FinetuneConfig, build_config  # noqa: E402
from pretrain.args import apply_override, dump_yaml, load_yaml  # noqa: E402


def resolve(config_path: str | Path | None, overrides: list[str]) -> FinetuneConfig:
    """Defaults < YAML file < ``a.b=v`` overrides, checked."""
    data = load_yaml(config_path) if config_path else {}
    for item in overrides:
        apply_override(data, item)
    return build_config(data)


def parse_args(argv: list[str] | None = None) -> tuple[FinetuneConfig, argparse.Namespace]:
    """``--config FILE [--local_rank N] [--print-config] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="finetune/main.py", description="Fine-tune a DNA language model on a "
                                     "classification task. Later sources win: defaults < --config < overrides.")
    parser.add_argument("--config", help="YAML task file (configs/finetune/*.yaml)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help="set by the deepspeed launcher; the rank is read from the environment")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    args = parser.parse_args(argv)
    try:
        cfg = resolve(args.config, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from finetune.trainer import FinetuneTrainer

    try:
        trainer = FinetuneTrainer(cfg)
    except ValueError as err:  # data, backbone or run directory refute the config; nothing was written
        print(f"finetune/main.py: error: {err}", file=sys.stderr)
        return 2
    code = trainer.train()
    trainer.close()
    return code


if __name__ == "__main__":
    sys.exit(main())

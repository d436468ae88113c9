"""Pretrain a DNA language model.

    deepspeed --num_gpus N pretrain/main.py --config configs/X.yaml [section.key=value ...]
    torchrun --nproc_per_node N pretrain/main.py --config configs/X.yaml [...]
    python pretrain/main.py --config configs/X.yaml [...]            # one process

The run lives in ``<run.out_dir>/<run.name>/`` and resumes from its ``checkpoints/latest`` by itself. Exit codes:
0 done or stopped by SIGUSR1/SIGTERM after saving; 2 bad command line or config; 3 stopped after too many
non-finite losses (saved).
"""

from __future__ import annotations

import sys

from pretrain.args import dump_yaml, parse_args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    from pretrain.trainer import Trainer  # heavy imports (deepspeed) only when training

    try:
        trainer = Trainer(cfg)
    except ValueError as err:  # a config that only the data or the world size can refute
        print(f"pretrain/main.py: error: {err}", file=sys.stderr)
        return 2
    code = trainer.train()
    trainer.close()
    return code


if __name__ == "__main__":
    sys.exit(main())

"""Pretrain a DNA language model.

    deepspeed --num_gpus N pretrain/main.py --config configs/X.yaml [section.key=value ...]
    torchrun --nproc_per_node N pretrain/main.py --config configs/X.yaml [...]
    python pretrain/main.py --config configs/X.yaml [...]            # one process

The run lives in ``<run.out_dir>/<run.name>/`` and resumes from its ``checkpoints/latest`` by itself: the same
command continues an interrupted run. Exit codes: 0 done or stopped by SIGUSR1/SIGTERM after saving; 2 bad command
line or config; 3 stopped after too many non-finite losses (saved); 130 stopped by Ctrl-C (SIGINT) after saving
(a second Ctrl-C aborts at once without saving).
"""

from __future__ import annotations

import sys

from pretrain.args import dump_yaml, parse_args


def main(argv: list[str] | None = None) -> int:
    cfg, args = parse_args(argv)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        from pretrain.trainer import Trainer  # heavy imports (deepspeed) only when training
    except KeyboardInterrupt:  # Ctrl-C before the trainer's handlers exist: nothing to save yet
        print("pretrain/main.py: interrupted while starting; nothing was trained or saved", file=sys.stderr)
        return 130
    try:
        trainer = Trainer(cfg)
    except ValueError as err:  # a config that only the data, the world size or the run directory can refute
        print(f"pretrain/main.py: error: {err}", file=sys.stderr)
        return 2
    code = trainer.train()
    trainer.close()
    return code


if __name__ == "__main__":
    sys.exit(main())

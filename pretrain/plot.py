"""Plot a run's train and validation loss against the optimizer step.

    python -m pretrain.plot runs/NAME [--out runs/NAME/loss.png]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """``(train records, valid records)`` of ``<run_dir>/metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {run_dir} a run directory?")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("split", "train") == "train"]
    valid = [r for r in records if r.get("split") == "valid"]
    return train, valid


def plot_loss(run_dir: str | Path, out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, valid = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    pts = [(r["step"], r["loss"]) for r in train if r.get("loss") is not None]
    ax.plot([s for s, _ in pts], [v for _, v in pts], label="train", lw=1.2)
    pts = [(r["step"], r["loss"]) for r in valid if r.get("loss") is not None]
    ax.plot([s for s, _ in pts], [v for _, v in pts], "o-", label="valid (held out)", lw=1.5)
    ax.axhline(math.log(4), color="grey", ls="--", lw=1, label="uniform over A/C/G/T (ln 4)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats / base)")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--out", help="PNG path (default: RUN_DIR/loss.png)")
    args = parser.parse_args(argv)
    try:
        out = plot_loss(args.run_dir, args.out or Path(args.run_dir) / "loss.png")
    except ValueError as err:
        parser.error(str(err))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Perplexity of a trained model per context length on a split of prepared shards (one process).

    python -m pretrain.evaluate MODEL --data DIR [--split valid] [--seq-lens 1024,4096] [--batch-size 8]
                                [--max-batches 32] [--out FILE.json] [--fail-above PPL]

``MODEL`` is a ``from_pretrained`` directory (``python -m pretrain.export``) or a training checkpoint / run
directory. Windows come from one ordered pass over the split (no augmentation); every non-N target counts
with weight 1, so the uniform model over A/C/G/T scores 4. Prints one JSON object per length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from pretrain.loss import eval_sums


def load_model(path: str | Path):
    path = Path(path)
    if (path / "config.json").is_file():
        from models import from_pretrained

        return from_pretrained(path).float().eval()
    from pretrain.export import load_checkpoint_model

    return load_checkpoint_model(path)[0]


def perplexity_at(model, data: str | Path, *, split: str, seq_len: int, batch_size: int,
                  max_batches: int | None) -> dict:
    """``{"seq_len", "loss", "ppl", "tokens", "batches"}`` for one window length."""
    from pretrain.data import WindowStream

    stream = WindowStream(data, split, seq_len=seq_len, micro_batch=batch_size, shuffle=False, epochs=1)
    loss_sum, weight_sum, batches = eval_sums(model, stream, torch.device("cpu"), max_batches)
    if weight_sum == 0:
        raise ValueError(f"split {split!r} of {data} gave no scored token at window length {seq_len}")
    loss = loss_sum / weight_sum
    return {"seq_len": seq_len, "loss": loss, "ppl": math.exp(loss), "tokens": int(weight_sum), "batches": batches}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="from_pretrained directory, or a training run / checkpoint")
    parser.add_argument("--data", required=True, help="shard directory (python -m data_prep shards)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--seq-lens", default="1024", help="comma-separated window lengths")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None, help="per length (default: the whole split)")
    parser.add_argument("--out", help="also write the results as a JSON list to this file")
    parser.add_argument("--fail-above", type=float, metavar="PPL",
                        help="exit with status 1 if a perplexity is not below PPL (a smoke test of training)")
    args = parser.parse_args(argv)
    try:
        seq_lens = [int(x) for x in args.seq_lens.split(",") if x.strip()]
        model = load_model(args.model)
        results = [perplexity_at(model, args.data, split=args.split, seq_len=n, batch_size=args.batch_size,
                                 max_batches=args.max_batches) for n in seq_lens]
    except ValueError as err:
        parser.error(str(err))
    for row in results:
        print(json.dumps(row))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    failed = [r for r in results if args.fail_above is not None and not r["ppl"] < args.fail_above]
    for row in failed:
        print(f"perplexity {row['ppl']:.4f} at length {row['seq_len']} is not below {args.fail_above}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

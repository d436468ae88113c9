"""Perplexity of a trained model per context length on a split of prepared shards (one process).

    python -m pretrain.evaluate MODEL --data DIR [--split valid] [--seq-lens 1024,4096] [--batch-size 8]
                                [--max-batches 32] [--out FILE.json] [--fail-above PPL]
    python -m pretrain.evaluate MODEL --data DIR --split test --context-lens 1024,4096,16384 [--targets T]
                                [--out ppl_vs_context.json] [--plot ppl_vs_context.png] [--batch-size 1]

``MODEL`` is a ``from_pretrained`` directory (``python -m pretrain.export``) or a training checkpoint / run
directory. Windows come from one ordered pass over the split (no augmentation); every non-N target counts
with weight 1, so the uniform model over A/C/G/T scores 4.

``--seq-lens``: each length gets its own pass over its own windows (each position scored once, with whatever
context precedes it inside its window). Prints one JSON object per length.

``--context-lens``: a fair comparison of context lengths. Windows have the largest length ``C``; in every
window the SAME final ``T`` targets (``--targets``, default a quarter of the smallest length) are scored at
every context length ``c``: the model reads the last ``c`` tokens of the window, so each scored base is
predicted from between ``c - T + 1`` and ``c`` preceding bases, and only the amount of context changes
between lengths. Windows shorter than ``C + 1`` bases (the end of a sample) are not scored. Writes a JSON
(per length: loss, perplexity, scored targets, and a sha256 of the scored positions and targets, equal at
every length) and a PNG of perplexity against context length (log x axis).
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


@torch.no_grad()
def context_perplexity(model, data: str | Path, *, split: str, context_lens: list[int], targets: int | None = None,
                       batch_size: int = 1, max_batches: int | None = None) -> dict:
    """Score the same final ``targets`` positions of every window at each context length (module docstring).

    Returns ``{"split", "targets", "window_len", "windows", "results": [{"context_len", "loss", "ppl", "tokens",
    "positions_sha256"}, ...]}`` with results in increasing context length.
    """
    import hashlib

    from pretrain.data import WindowStream
    from pretrain.loss import token_losses

    lens = sorted(set(context_lens))
    if not lens or lens[0] < 1:
        raise ValueError(f"--context-lens needs positive lengths, got {context_lens}")
    targets = max(1, lens[0] // 4) if targets is None else targets
    if not 1 <= targets <= lens[0]:
        raise ValueError(f"--targets must lie in [1, smallest context length {lens[0]}], got {targets}: every "
                         "length scores the same targets inside its own context")
    l_max = getattr(getattr(model, "config", None), "l_max", None)
    if l_max is not None and lens[-1] > l_max:
        raise ValueError(f"context length {lens[-1]} exceeds the model's l_max {l_max}; drop it from --context-lens")
    top = lens[-1]
    stream = WindowStream(data, split, seq_len=top, micro_batch=batch_size, shuffle=False, epochs=1,
                          return_windows=True)
    sums = {c: [0.0, 0.0, hashlib.sha256()] for c in lens}
    windows = batches = 0
    for batch in stream:
        if max_batches is not None and batches >= max_batches:
            break
        batches += 1
        full = (batch["windows"][:, 0] >= 0) & (batch["windows"][:, 2] == top + 1)  # whole windows only
        if not bool(full.any()):
            continue
        windows += int(full.sum())
        for c in lens:
            ids, labels = batch["input_ids"][full, top - c:], batch["labels"][full, top - c:]
            weight = batch["loss_mask"][full, top - c:][:, -targets:].double()
            losses = token_losses(model(ids), labels)[:, -targets:].double()
            sums[c][0] += float((losses * weight).sum())
            sums[c][1] += float(weight.sum())
            # what was scored at this length, from the slices actually used: window, positions, targets, weights
            where = batch["windows"][full].clone()
            where[:, 1] += top - targets  # first scored label sits at window offset top - targets + 1
            for part in (where, labels[:, -targets:], weight):
                sums[c][2].update(part.contiguous().numpy().tobytes())
    if windows == 0:
        raise ValueError(f"split {split!r} of {data} has no whole window of {top + 1} bases; use shorter "
                         "--context-lens or prepare longer chunks")
    results = []
    for c in lens:
        loss_sum, weight_sum, digest = sums[c]
        if weight_sum == 0:
            raise ValueError(f"split {split!r} of {data}: every scored target is N")
        results.append({"context_len": c, "loss": loss_sum / weight_sum, "ppl": math.exp(loss_sum / weight_sum),
                        "tokens": int(weight_sum), "positions_sha256": digest.hexdigest()})
    return {"split": split, "targets": targets, "window_len": top, "windows": windows, "batches": batches,
            "results": results}


def plot_context(report: dict, out: str | Path, title: str = "") -> Path:
    """PNG of perplexity against context length (log x axis) from :func:`context_perplexity`'s report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    ax.plot([r["context_len"] for r in rows], [r["ppl"] for r in rows], "o-", lw=1.5)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (bases)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or f"{report['split']}: last {report['targets']} bases of {report['windows']} windows")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pretrain.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="from_pretrained directory, or a training run / checkpoint")
    parser.add_argument("--data", required=True, help="shard directory (python -m data_prep shards)")
    parser.add_argument("--split", default="valid")
    parser.add_argument("--seq-lens", default=None, help="comma-separated window lengths (default 1024)")
    parser.add_argument("--context-lens", default=None,
                        help="comma-separated context lengths scored on the same final targets of each window")
    parser.add_argument("--targets", type=int, default=None,
                        help="with --context-lens: scored bases per window (default: smallest length / 4)")
    parser.add_argument("--plot", help="with --context-lens: PNG path (default: --out with .png)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-batches", type=int, default=None, help="per length (default: the whole split)")
    parser.add_argument("--out", help="also write the results as JSON to this file (with --context-lens: default "
                        "ppl_vs_context.json)")
    parser.add_argument("--fail-above", type=float, metavar="PPL",
                        help="exit with status 1 if a perplexity is not below PPL (a smoke test of training)")
    args = parser.parse_args(argv)
    if args.context_lens is not None:
        return _main_context(parser, args)
    try:
        seq_lens = _lengths(args.seq_lens or "1024", "--seq-lens")
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


def _lengths(text: str, flag: str) -> list[int]:
    try:
        lens = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{flag} takes comma-separated integers, got {text!r}") from None
    if not lens or min(lens) < 1:
        raise ValueError(f"{flag} takes positive lengths, got {text!r}")
    return lens


def _main_context(parser: argparse.ArgumentParser, args) -> int:
    if args.seq_lens is not None:
        parser.error("use either --seq-lens (a pass per window length) or --context-lens (the same targets at "
                     "every context length), not both")
    out = Path(args.out or "ppl_vs_context.json")
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    try:
        lens = _lengths(args.context_lens, "--context-lens")
        model = load_model(args.model)
        report = context_perplexity(model, args.data, split=args.split, context_lens=lens, targets=args.targets,
                                    batch_size=args.batch_size, max_batches=args.max_batches)
    except ValueError as err:
        parser.error(str(err))
    report.update({"model": str(args.model), "data": str(args.data)})
    for row in report["results"]:
        print(json.dumps(row))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    plot_context(report, plot)
    print(f"wrote {out} and {plot}", file=sys.stderr)
    failed = [r for r in report["results"] if args.fail_above is not None and not r["ppl"] < args.fail_above]
    for row in failed:
        print(f"perplexity {row['ppl']:.4f} at context {row['context_len']} is not below {args.fail_above}",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Forward + backward time and peak memory of one training step, batch 1, L = 2^10 ... 2^20 tokens.

    python bench/models.py                          # hyena and mamba (d_model 128, 2 layers), L = 2^10..2^20
    python bench/models.py --arch mamba --max-log2 16 --json /tmp/m.json --png /tmp/m.png
    python bench/models.py --parity data/sample/golden     # converted reference checkpoints vs their goldens

Each (architecture, L) point runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is that step's alone;
``base_rss_gb`` is the RSS after building the model, before the step. Prints one JSON object per point (one
line each) and a summary list at the end, writes the results to ``--json`` (default bench/results/models.json)
and a PNG of time and peak RSS against L to ``--png`` (default bench/results/models.png). Tokens come from real
GRCh38 (chr20 of the repository's sample, data/sample/hg38/hg38_subset.fa.gz).
The 2^20 points need about 12 GB of RAM (bench/results/models.json): run where nothing else is running.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path and `import models` would import this file
# (bench/models.py) instead of the package: put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
HG38 = REPO / "data" / "sample" / "hg38" / "hg38_subset.fa.gz"
ARCHS = {
    "hyena": {"arch": "hyena", "d_model": 128, "n_layer": 2},
    "mamba": {"arch": "mamba", "d_model": 128, "n_layer": 2},
}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def _tokens(L: int):
    import numpy as np
    import torch

    from models.tokenizer import encode

    from data_prep.fasta import FastaReader

    seq = FastaReader(HG38).fetch("chr20", 100_000, 100_000 + L + 1)
    return torch.from_numpy(encode(seq).astype(np.int64))[None], "hg38 chr20:100001"


def run_point(arch: str, log2: int, checkpoint: bool) -> dict:
    """One training step (forward, loss, backward) at L = 2^log2 in this process; returns its measurements."""
    import torch
    import torch.nn.functional as F

    import models

    L = 1 << log2
    torch.manual_seed(0)
    model = models.build_model({**ARCHS[arch], "l_max": L, "checkpoint_activations": checkpoint})
    ids, source = _tokens(L)
    warm = ids[:, : min(L, 1024) + 1]  # a short step first: one-off initialisation stays out of the timing
    F.cross_entropy(model(warm[:, :-1])[0], warm[0, 1:]).backward()
    model.zero_grad(set_to_none=True)
    base = _rss_gb()
    t0 = time.perf_counter()
    logits = model(ids[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[0, 1:])
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    return {"arch": arch, "L": L, "d_model": model.config.d_model, "n_layer": model.config.n_layer,
            "checkpoint_activations": checkpoint, "tokens": source, "loss": round(loss.item(), 4),
            "forward_s": round(t1 - t0, 2), "backward_s": round(t2 - t1, 2), "step_s": round(t2 - t0, 2),
            "base_rss_gb": round(base, 3), "peak_rss_gb": round(_rss_gb(), 3),
            "torch_threads": torch.get_num_threads()}


def parity(golden: Path) -> list[dict]:
    """Convert the reference checkpoints in ``golden/{hyena,mamba}`` and compare with their stored outputs."""
    import torch
    import torch.nn.functional as F

    from models.convert import convert_hyenadna, convert_mamba_ssm, hyenadna_key, mamba_ssm_key

    rows = []
    for arch, convert, key in (("hyena", convert_hyenadna, hyenadna_key), ("mamba", convert_mamba_ssm, mamba_ssm_key)):
        ids = torch.load(golden / arch / "inputs.pt", weights_only=True)["input_ids"]
        ref = torch.load(golden / arch / "outputs.pt", weights_only=True)
        model = convert(golden / arch).eval()
        with torch.no_grad():
            logits32 = model(ids)
        model.double()
        logits = model(ids)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        params = dict(model.named_parameters())
        grad_rel = max(((params[key(n)].grad - g).abs().max() / g.abs().max()).item() for n, g in ref["grads"].items())
        rows.append({"arch": arch, "parameters": model.num_parameters(), "tokens": list(ids.shape),
                     "float64_logits_max_abs_diff": (logits - ref["logits"]).abs().max().item(),
                     "float64_loss_abs_diff": abs(loss.item() - ref["loss"].item()),
                     "float64_grads_max_rel_diff": grad_rel, "grads_compared": len(ref["grads"]),
                     "float32_logits_max_abs_diff_vs_float64_ref": (logits32.double() - ref["logits"]).abs().max().item()})
    return rows


def plot(results: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for arch in sorted({r["arch"] for r in results}):
        rows = sorted((r for r in results if r["arch"] == arch), key=lambda r: r["L"])
        xs = [r["L"] for r in rows]
        ax_t.plot(xs, [r["step_s"] for r in rows], "o-", label=arch)
        ax_m.plot(xs, [r["peak_rss_gb"] for r in rows], "o-", label=arch)
    for ax, ylabel in ((ax_t, "forward + backward (s)"), (ax_m, "peak RSS (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sequence length L (tokens, batch 1)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_t.set_yscale("log")
    ax_m.axhline(16, color="grey", ls="--", lw=1)
    fig.suptitle("one training step on CPU, d_model 128, 2 layers, float32")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=list(ARCHS), action="append", help="repeatable; default: all")
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=20)
    parser.add_argument("--no-checkpoint", action="store_true", help="disable per-block activation checkpointing")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "models.json")
    parser.add_argument("--png", type=Path, default=REPO / "bench" / "results" / "models.png")
    parser.add_argument("--parity", type=Path, metavar="GOLDEN", help="only compare converted checkpoints with GOLDEN")
    parser.add_argument("--point", nargs=2, metavar=("ARCH", "LOG2"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parity:
        print(json.dumps(parity(args.parity), indent=1))
        return 0
    if args.point:
        print(json.dumps(run_point(args.point[0], int(args.point[1]), not args.no_checkpoint)))
        return 0
    results = []
    command = " ".join(["python bench/models.py", *(sys.argv[1:] if argv is None else argv)])
    png = args.png.resolve()
    png_name = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)

    def save(done: bool) -> dict:  # after every point, so an interrupted sweep keeps what it measured
        summary = {"command": command, "complete": done, "results": results, "png": png_name}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        if any("error" not in r for r in results):
            plot([r for r in results if "error" not in r], args.png)
        return summary

    failed: set[str] = set()
    for log2 in range(args.min_log2, args.max_log2 + 1):  # L outermost: a cut-short sweep still covers every arch
        for arch in args.arch or list(ARCHS):
            if arch in failed:  # a longer L would fail too (usually out of memory)
                continue
            cmd = [sys.executable, __file__, "--point", arch, str(log2)] + (["--no-checkpoint"] * args.no_checkpoint)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                failed.add(arch)
                results.append({"arch": arch, "L": 1 << log2, "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
            save(False)
    print(json.dumps(save(True)))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

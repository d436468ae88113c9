"""Sequence parallelism on CPU: per-rank peak memory, step time and bytes sent, SP = 1 vs SP = 2 processes.

    python bench/sequence_parallel.py                            # hyena and mamba, L = 2^18 and 2^20, SP 1 and 2
    python bench/sequence_parallel.py --arch mamba --log2 16 --sp 2 --json /tmp/sp.json --png /tmp/sp.png

Each point runs ``sp`` fresh processes (gloo, one torch thread each) that build the model (d_model 128, 2 layers,
per-block activation checkpointing, float32), apply ``parallel.apply_sequence_parallel``, take one short warm-up
step, then one forward + cross-entropy + backward on their slice of a window of real GRCh38 (chr20 of the
repository's sample). Per rank it records the peak RSS (``ru_maxrss``), the RSS after the warm-up (``base``), the
step time and the bytes its collectives sent per layer (``parallel.count_bytes``, the recomputation of the
checkpointed blocks included), next to the bytes the shapes predict (:func:`bytes_formula`) and the planner's
activation estimate (``parallel.plan.activation_bytes`` with the torch kernels); ``peak - base`` is the measured
activation peak. Results go to ``--json`` (default bench/results/sequence_parallel.json, rewritten after every
point, with the machine's load average) and a plot to ``--png``. The 2^20 points need about 12 GB (SP 1) or
2 x 7 GB (SP 2) of RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path: put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
HG38 = REPO / "data" / "sample" / "hg38" / "hg38_subset.fa.gz"
MODEL = {"d_model": 128, "n_layer": 2, "checkpoint_activations": True}
TARGET_PEAK_RATIO, TARGET_PLANNER = 0.6, 0.25


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB


def bytes_formula(cfg, L: int, sp: int, rank: int, batch: int = 1, elem: int = 4) -> int:
    """Bytes one rank's collectives send for one layer in a checkpointed forward + backward (the forward runs
    twice: once, then again in the backward's recomputation). Follows parallel/collectives.py's table."""
    if sp == 1:
        return 0
    ls = L // sp
    first, last = rank == 0, rank == sp - 1
    if cfg.arch == "hyena":
        a2a = batch * ls * cfg.d_model * elem * (sp - 1) // sp  # one all-to-all of the gated product (B, Ls, d)
        halo = (cfg.hyena.short_filter_order - 1) * batch * 3 * cfg.d_model * elem  # of in_proj's output (3d)
        fwd, bwd = 2 * a2a + (0 if last else halo), 2 * a2a + (0 if first else halo)
    else:
        di = cfg.mamba.expand * cfg.d_model
        gather = 2 * batch * di * cfg.mamba.d_state * elem * (sp - 1)  # (decay product, final state)
        halo = (cfg.mamba.d_conv - 1) * batch * di * elem
        fwd, bwd = gather + (0 if last else halo), gather + (0 if first else halo)
    return 2 * fwd + bwd


def run_rank(arch: str, log2: int, sp: int, rank: int, port: int) -> dict:
    """One rank of one point (in this process); returns its measurements."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import models
    from data_prep.fasta import FastaReader
    from models.tokenizer import encode
    from parallel import ParallelDims, apply_sequence_parallel, count_bytes, shard_sequence
    from parallel.plan import activation_bytes

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=sp)
    dims = ParallelDims(dp=1, sp=sp).build()
    L = 1 << log2
    torch.manual_seed(0)
    model = models.build_model({"arch": arch, "l_max": L, **MODEL})
    apply_sequence_parallel(model, dims)
    seq = FastaReader(HG38).fetch("chr20", 100_000, 100_000 + L + 1)
    import numpy as np

    ids = torch.from_numpy(encode(seq).astype(np.int64))[None]

    def step(window: torch.Tensor):
        x, y = shard_sequence(window[:, :-1], dims), shard_sequence(window[:, 1:], dims)
        logits = model(x)
        loss = F.cross_entropy(logits[0], y[0], reduction="sum") / (window.shape[1] - 1)  # mean over the window
        return loss

    step(ids[:, : 1024 * sp + 1]).backward()  # one-off initialisation stays out of the measurement
    model.zero_grad(set_to_none=True)
    base = _rss_gb()
    dist.barrier()
    with count_bytes() as sent:
        t0 = time.perf_counter()
        loss = step(ids)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
    peak = _rss_gb()
    total = loss.detach().clone()
    dist.all_reduce(total)
    act, ws = activation_bytes(model.config, seq_len=L, sp=sp, batch=1, precision="fp32", impl="torch")
    layer = "layers.0.mixer"
    out = {"arch": arch, "L": L, "sp": sp, "rank": rank, "loss": round(total.item(), 4),
           "forward_s": round(t1 - t0, 2), "backward_s": round(t2 - t1, 2), "step_s": round(t2 - t0, 2),
           "base_rss_gb": round(base, 3), "peak_rss_gb": round(peak, 3), "measured_act_gb": round(peak - base, 3),
           "planner_act_gb": round((act + ws) / 2**30, 3),
           "bytes_layer0": sent.total(tag=layer), "bytes_layer0_forward": sent.total(tag=layer, direction="forward"),
           "bytes_layer0_formula": bytes_formula(model.config, L, sp, rank),
           "bytes_all_layers": sent.total(), "torch_threads": torch.get_num_threads()}
    dist.destroy_process_group()
    return out


def launch_ranks(script: str, rank_args, world: int, failed: dict) -> list[dict]:
    """Run ``python script --rank *rank_args(r, port)`` for every rank r of ``world`` (one thread each, one
    rendezvous port); each rank's JSON line, rank order, or ``failed`` plus ``rank`` and the error's last lines."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, script, "--rank", *map(str, rank_args(r, port))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(world)]
    rows = []
    for r, p in enumerate(procs):
        out, err = p.communicate()
        if p.returncode != 0:
            rows.append({**failed, "rank": r, "error": err.strip().splitlines()[-3:]})
        else:
            rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def run_point(arch: str, log2: int, sp: int) -> list[dict]:
    """Start ``sp`` rank processes for one point; their results, rank order (an ``error`` entry on failure)."""
    return launch_ranks(__file__, lambda r, port: (arch, log2, sp, r, port), sp,
                        {"arch": arch, "L": 1 << log2, "sp": sp})


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (arch, L, sp): worst rank's peak, its ratio to SP = 1, planner error, bytes vs formula."""
    out = []
    ok = [r for r in rows if "error" not in r]
    for key in sorted({(r["arch"], r["L"], r["sp"]) for r in ok}):
        ranks = [r for r in ok if (r["arch"], r["L"], r["sp"]) == key]
        worst = max(ranks, key=lambda r: r["measured_act_gb"])
        one = [r for r in ok if (r["arch"], r["L"], r["sp"]) == (key[0], key[1], 1)]
        line = {"arch": key[0], "L": key[1], "sp": key[2], "step_s": max(r["step_s"] for r in ranks),
                "peak_rss_gb": max(r["peak_rss_gb"] for r in ranks), "measured_act_gb": worst["measured_act_gb"],
                "planner_act_gb": worst["planner_act_gb"],
                "planner_error": round(worst["planner_act_gb"] / worst["measured_act_gb"] - 1, 3),
                "bytes_layer0_per_rank": [r["bytes_layer0"] for r in ranks],
                "bytes_layer0_formula": [r["bytes_layer0_formula"] for r in ranks]}
        if one and key[2] > 1:
            line["peak_ratio_vs_sp1"] = round(line["peak_rss_gb"] / max(r["peak_rss_gb"] for r in one), 3)
            line["act_ratio_vs_sp1"] = round(line["measured_act_gb"] / max(r["measured_act_gb"] for r in one), 3)
        out.append(line)
    return out


def plot(summary: list[dict], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_m, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for arch, marker in (("hyena", "o"), ("mamba", "s")):
        for sp, color in ((1, "C0"), (2, "C1")):
            rows = sorted((s for s in summary if s["arch"] == arch and s["sp"] == sp), key=lambda s: s["L"])
            if not rows:
                continue
            xs = [s["L"] for s in rows]
            ax_m.plot(xs, [s["measured_act_gb"] for s in rows], marker + "-", color=color,
                      label=f"{arch} SP={sp} measured")
            ax_m.plot(xs, [s["planner_act_gb"] for s in rows], marker + ":", color=color, mfc="none",
                      label=f"{arch} SP={sp} planner")
            if sp > 1:
                ax_b.plot(xs, [max(s["bytes_layer0_per_rank"]) / 2**20 for s in rows], marker + "-", color=color,
                          label=f"{arch} measured (max rank)")
                ax_b.plot(xs, [max(s["bytes_layer0_formula"]) / 2**20 for s in rows], marker + ":", color="k",
                          mfc="none", label=f"{arch} formula")
    ax_m.set_ylabel("per-rank activation peak (GiB, peak RSS - base)")
    ax_b.set_ylabel("bytes sent per layer per rank (MiB), SP=2")
    ax_b.set_yscale("log")
    for ax in (ax_m, ax_b):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("window length L (tokens, batch 1)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("one checkpointed training step on CPU, d_model 128, 2 layers, float32 (SP=2: 1 thread per rank)")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("hyena", "mamba"), action="append", help="repeatable; default both")
    parser.add_argument("--log2", type=int, action="append", help="repeatable; default 18 and 20")
    parser.add_argument("--sp", type=int, action="append", help="repeatable; default 1 and 2")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "sequence_parallel.json")
    parser.add_argument("--png", type=Path, default=REPO / "bench" / "results" / "sequence_parallel.png")
    parser.add_argument("--update", action="store_true",
                        help="re-measure only the points asked for and replace them in an existing --json, keeping "
                             "its other points (the commands of both runs are listed)")
    parser.add_argument("--rank", nargs=5, metavar=("ARCH", "LOG2", "SP", "RANK", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank:
        arch, log2, sp, rank, port = args.rank
        print(json.dumps(run_rank(arch, int(log2), int(sp), int(rank), int(port))))
        return 0
    command = " ".join(["python bench/sequence_parallel.py", *(sys.argv[1:] if argv is None else argv)])
    points = [(arch, log2, sp) for log2 in sorted(args.log2 or [18, 20])  # short first, larger SP first: a
              for sp in sorted(args.sp or [1, 2], reverse=True)          # cut-short run keeps the most
              for arch in args.arch or ["hyena", "mamba"]]
    rows: list[dict] = []
    commands = [command]
    if args.update and args.json.exists():
        prior = json.loads(args.json.read_text())
        redo = {(arch, 1 << log2, sp) for arch, log2, sp in points}
        rows = [r for r in prior["ranks"] if (r["arch"], r["L"], r["sp"]) not in redo]
        commands = prior.get("commands", [prior.get("command")]) + [command]
    load = os.getloadavg()[0]  # 1-minute load average of the machine (other work shares the cores)

    def save(done: bool) -> None:  # after every point, so an interrupted run keeps what it measured
        summary = summarize(rows)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"commands": commands, "complete": done, "load_avg_at_start": load,
                                         "load_avg_at_last_save": os.getloadavg()[0],
                                         "targets": {"peak_ratio_sp2_vs_sp1": TARGET_PEAK_RATIO,
                                                     "planner_rel_error": TARGET_PLANNER},
                                         "summary": summary, "ranks": rows}, indent=1) + "\n")
        if summary:
            plot(summary, args.png)

    for arch, log2, sp in points:
        start_load = os.getloadavg()[0]
        rows.extend({**r, "load_avg_at_start": start_load, "command": command} for r in run_point(arch, log2, sp))
        print(json.dumps(rows[-sp:]), flush=True)
        save(False)
    save(True)
    print(json.dumps(summarize(rows), indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

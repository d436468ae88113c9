"""One CPU training step, longdna against the reference, measured side by side: step time and peak RSS.

    python bench/cpu_speed.py               # hyena and mamba L = 2^10 .. 2^18 (~20 min on 2 quiet cores)
    python bench/cpu_speed.py --arch hyena --max-log2 14 --json /tmp/h.json

Model: d_model 128 × 2 layers, batch 1, float32, forward + loss + backward, ``torch.set_num_threads(2)``.
Contenders at every L (``impl``):

* ``reference``: the plain-torch stand-in for the public training code (hyena: ``bench/reference_hyena.py``,
  HyenaDNA's ``HyenaOperator`` + flash-attn ``Block`` on its CPU path, no checkpointing; mamba:
  ``bench/reference_mamba.py``, mamba_ssm's slow path with ``selective_scan_ref``), checked equal to longdna on
  the golden weights by tests/bench/test_reference_standins.py;
* ``longdna-off`` / ``longdna-on``: ``models.build_model`` with ``checkpoint`` false / true; ``longdna-auto``
  (``checkpoint: auto``, the default) is whichever of the two it picks at that L (``auto_checkpoints``), so it is
  not measured a third time. Past ``--max-log2-off`` only auto's pick is run (to keep the run near 15 minutes).

Each (arch, impl, L) point runs in a fresh subprocess, so its peak RSS (``ru_maxrss``) is that step's alone;
inside it, one short warm-up step (L <= 1024), then ``reps`` timed steps (the median is reported). Points are
interleaved (for each L every contender in turn, the order alternating from one L to the next) so a change in
the machine's load hits all contenders alike; the 1-minute load average is recorded around every point and at
the start and end. ``ratio_*`` = longdna / reference for the same L; ``ratio_rss_*`` compares raw peaks,
``ratio_step_rss_*`` peaks minus the RSS just before the model is built (python + torch, ~0.25 GB on both sides). The mamba reference materialises
(B, D, L, N) tensors and loops over time in Python: points whose estimated memory exceeds ``--ref-mem-gb`` are
skipped (and marked so). Prints one JSON line per point and a summary object at the end; writes ``--json``
(default bench/results/cpu_speed.json) after every point.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # `import models` must find the package, not bench/models.py

D_MODEL, N_LAYER, THREADS = 128, 2, 2
IMPLS = ("reference", "longdna-off", "longdna-on", "longdna-auto")
RUN_IMPLS = ("reference", "longdna-off", "longdna-on")  # auto is one of off / on: measured once, not twice


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _build(arch: str, impl: str, L: int):
    import models

    if impl == "reference":  # with longdna's initial weights (same values, so the same arithmetic)
        import torch

        from models.convert import hyenadna_key, mamba_ssm_key

        if arch == "hyena":
            from bench.reference_hyena import ConvLMHeadModel

            ref, key = ConvLMHeadModel(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=16, l_max=L), hyenadna_key
        else:
            from bench.reference_mamba import MambaLMHeadModel

            ref, key = MambaLMHeadModel(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=16), mamba_ssm_key
        ours = models.build_model({"arch": arch, "d_model": D_MODEL, "n_layer": N_LAYER, "l_max": L}).state_dict()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                p.copy_(ours[key(name)])
        del ours
        return ref

    mode = {"longdna-off": False, "longdna-on": True, "longdna-auto": "auto"}[impl]
    return models.build_model({"arch": arch, "d_model": D_MODEL, "n_layer": N_LAYER, "l_max": L, "checkpoint": mode})


def run_point(arch: str, impl: str, log2: int, reps: int) -> dict:
    """Build, warm up, then time ``reps`` steps at L = 2^log2 in this process."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(THREADS)
    L = 1 << log2
    torch.manual_seed(0)
    before_build = _rss_gb()  # python + torch: the same for every contender
    model = _build(arch, impl, L)
    ids = torch.randint(7, 11, (1, L + 1), generator=torch.Generator().manual_seed(1))

    def step(x):
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[0, 1:])
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        del logits
        return t1 - t0, t2 - t0, loss.item()

    step(ids[:, : min(L, 1024) + 1])  # one-off initialisation stays out of the timing
    base = _rss_gb()
    fwd, tot = [], []
    for _ in range(reps):
        f, t, loss = step(ids)
        fwd.append(f)
        tot.append(t)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    out = {"arch": arch, "impl": impl, "L": L, "reps": reps, "step_s": round(med(tot), 4),
           "forward_s": round(med(fwd), 4), "step_s_all": [round(x, 4) for x in tot], "loss": round(loss, 4),
           "rss_before_build_gb": round(before_build, 3), "base_rss_gb": round(base, 3), "peak_rss_gb": round(_rss_gb(), 3), "threads": torch.get_num_threads()}
    if impl != "reference":
        from models.lm import Block

        blocks = [m for m in model.modules() if isinstance(m, Block)]
        out["checkpointed"] = bool(blocks) and blocks[0].use_checkpoint(1, L)
    return out


def saved_floats(arch: str, log2: int = 12) -> float:
    """Floats autograd keeps for the backward of one longdna forward (``checkpoint: false``, loss included), per
    token, per layer and per d_model unit: every distinct storage packed by ``saved_tensors_hooks``, counted
    once. The figure behind ``models.config.ACTIVATION_FLOATS``."""
    import torch
    import torch.nn.functional as F

    L = 1 << log2
    model = _build(arch, "longdna-off", L)
    ids = torch.randint(7, 11, (1, L + 1), generator=torch.Generator().manual_seed(1))
    storages: dict[int, int] = {}

    def pack(t):
        storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(ids[:, :-1])
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[0, 1:])
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = sum(n for ptr, n in storages.items() if ptr not in params)
    return kept / 4 / L / N_LAYER / D_MODEL


def _reps(log2: int) -> int:
    return 3 if log2 <= 15 else 2 if log2 <= 16 else 1


def _mamba_ref_gb(L: int) -> float:
    """Peak memory the mamba reference needs at L: per layer, deltaA and deltaB_u (B, Di, L, N) plus the per-step
    states autograd keeps (the same size again), float32, and ~0.5 GB of everything else."""
    return N_LAYER * 3 * (2 * D_MODEL) * L * 16 * 4 / 1e9 + 0.5


def _auto_checkpoints(arch: str, L: int) -> bool:
    """What ``checkpoint: auto`` (the default) decides for a batch-1 float32 window of L tokens."""
    from models.config import ModelConfig

    return ModelConfig(arch=arch, d_model=D_MODEL, n_layer=N_LAYER, l_max=L).validate().use_checkpoint(1, L)


def _ratios(results: list[dict]) -> list[dict]:
    rows = []
    for arch in sorted({r["arch"] for r in results}):
        for L in sorted({r["L"] for r in results if r["arch"] == arch}):
            pts = {r["impl"]: r for r in results if r["arch"] == arch and r["L"] == L and "step_s" in r}
            row = {"arch": arch, "L": L}
            for impl, r in pts.items():
                row[f"{impl}_step_s"], row[f"{impl}_peak_rss_gb"] = r["step_s"], r["peak_rss_gb"]
                if "rss_before_build_gb" in r:
                    row[f"{impl}_step_rss_gb"] = round(r["peak_rss_gb"] - r["rss_before_build_gb"], 3)
            auto = _auto_checkpoints(arch, L)
            row["auto_checkpoints"] = auto
            if "longdna-auto" not in pts and f"longdna-{'on' if auto else 'off'}" in pts:
                pts["longdna-auto"] = pts[f"longdna-{'on' if auto else 'off'}"]
                row["longdna-auto_step_s"] = pts["longdna-auto"]["step_s"]
                row["longdna-auto_peak_rss_gb"] = pts["longdna-auto"]["peak_rss_gb"]
            ref = pts.get("reference")
            if ref:
                for impl in IMPLS[1:]:
                    if impl in pts:
                        row[f"ratio_time_{impl}"] = round(pts[impl]["step_s"] / ref["step_s"], 3)
                        row[f"ratio_rss_{impl}"] = round(pts[impl]["peak_rss_gb"] / ref["peak_rss_gb"], 3)
                        if "rss_before_build_gb" in ref and "rss_before_build_gb" in pts[impl]:
                            own = pts[impl]["peak_rss_gb"] - pts[impl]["rss_before_build_gb"]
                            row[f"ratio_step_rss_{impl}"] = round(own / (ref["peak_rss_gb"] - ref["rss_before_build_gb"]), 3)
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=["hyena", "mamba"], action="append", help="repeatable; default: both")
    parser.add_argument("--impl", choices=IMPLS, action="append",
                        help="repeatable; default: reference, longdna-off, longdna-on (auto's figures are those of "
                             "the one it picks)")
    parser.add_argument("--max-log2-off", type=int, default=16,
                        help="past this length run longdna-off only where auto picks it (default 16)")
    parser.add_argument("--mamba-max-log2", type=int, default=18, help="longest mamba point (default 18)")
    parser.add_argument("--min-log2", type=int, default=10)
    parser.add_argument("--max-log2", type=int, default=18)
    parser.add_argument("--ref-mem-gb", type=float, default=8.0, help="skip mamba reference points needing more")
    parser.add_argument("--mamba-ref-max-log2", type=int, default=18,
                        help="skip mamba reference points past this length (its Python loop over L is slow)")
    parser.add_argument("--reps", type=int, help="timed steps per point (default: 3 up to 2^15, 2 at 2^16, 1 past)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "cpu_speed.json")
    parser.add_argument("--saved-floats", action="store_true",
                        help="only print the floats per token, layer and d_model that autograd keeps (longdna, "
                             "checkpoint false, L = 2^12) for each --arch, and exit")
    parser.add_argument("--point", nargs=4, metavar=("ARCH", "IMPL", "LOG2", "REPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        arch, impl, log2, reps = args.point
        print(json.dumps(run_point(arch, impl, int(log2), int(reps))))
        return 0
    if args.saved_floats:
        for arch in args.arch or ["hyena", "mamba"]:
            print(json.dumps({"arch": arch, "L": 1 << 12,
                              "saved_floats_per_token_layer_d": round(saved_floats(arch), 2)}))
        return 0
    command = " ".join(["python bench/cpu_speed.py", *(sys.argv[1:] if argv is None else argv)])
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    results: list[dict] = []
    started, load_start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), _load()
    t_start = time.perf_counter()

    def save(done: bool) -> dict:
        summary = {"command": command, "complete": done, "started_utc": started,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": THREADS},
                   "model": {"d_model": D_MODEL, "n_layer": N_LAYER, "batch": 1, "dtype": "float32"},
                   "load_avg_1min_start": load_start, "load_avg_1min_end": _load() if done else None,
                   "wall_s": round(time.perf_counter() - t_start, 1), "ratios": _ratios(results), "points": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        return summary

    failed: set[tuple[str, str]] = set()
    for i, log2 in enumerate(range(args.min_log2, args.max_log2 + 1)):
        L = 1 << log2
        for arch in args.arch or ["hyena", "mamba"]:
            if arch == "mamba" and log2 > args.mamba_max_log2:
                continue
            impls = list(args.impl or RUN_IMPLS)
            if log2 > args.max_log2_off and not args.impl:
                impls.remove("longdna-off" if _auto_checkpoints(arch, L) else "longdna-on")
            for impl in impls if i % 2 == 0 else impls[::-1]:  # alternate the order from one L to the next
                point = {"arch": arch, "impl": impl, "L": L}
                if (arch, impl) in failed:
                    continue
                if arch == "mamba" and impl == "reference" and log2 > args.mamba_ref_max_log2:
                    results.append({**point, "skipped": f"past --mamba-ref-max-log2 {args.mamba_ref_max_log2} "
                                                        f"(a Python loop of L steps, forward and backward)"})
                    print(json.dumps(results[-1]), flush=True)
                    continue
                if arch == "mamba" and impl == "reference" and _mamba_ref_gb(L) > args.ref_mem_gb:
                    results.append({**point, "skipped": f"needs ~{_mamba_ref_gb(L):.0f} GB (> --ref-mem-gb "
                                                        f"{args.ref_mem_gb:g}): (B, D, L, N) tensors + a Python "
                                                        f"loop over L kept by autograd"})
                    print(json.dumps(results[-1]), flush=True)
                    continue
                reps = args.reps or _reps(log2)
                load0 = _load()
                cmd = [sys.executable, __file__, "--point", arch, impl, str(log2), str(reps)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
                if proc.returncode != 0:
                    failed.add((arch, impl))
                    results.append({**point, "error": proc.stderr.strip().splitlines()[-1:]})
                else:
                    results.append({**json.loads(proc.stdout.strip().splitlines()[-1]),
                                    "load_avg_1min": [load0, _load()]})
                print(json.dumps(results[-1]), flush=True)
                save(False)
    summary = save(True)
    print(json.dumps({k: v for k, v in summary.items() if k != "points"}, indent=1))
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())

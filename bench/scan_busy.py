"""Mamba's CPU selective scan (forward + backward) on a quiet and on a busy machine, two scheduling paths.

    python bench/scan_busy.py                                   # L = 2^13 .. 2^15, quiet and 2 busy loops
    python bench/scan_busy.py --min-log2 13 --max-log2 16 --busy 0 2 --json /tmp/s.json

Shapes of one Mamba layer of the d_model 128 model (expand 2: D = 256 channels, N = 16 states), batch 1,
float32, per-batch B / C (B, N, L), z gate, delta_bias + softplus, 2 intra-op threads. Paths (``path``):

* ``slices`` (what ``kernels.scan.ref`` does now): the channels are cut into one slice per intra-op thread and
  each slice is scanned whole by its own thread with single-threaded torch ops (one hand-off per call);
* ``regions`` (the former path): one thread runs the scan and every torch op of every chunk is an OpenMP
  parallel region over the 2 intra-op threads (``PARALLEL_MIN_ELEMENTS`` raised past the problem size, which
  is exactly how small calls still run).

``busy`` is the number of background processes spinning in a pure-Python busy loop for the duration of the
point (started before the timed steps, stopped after), i.e. other work competing for the 2 cores. Each point
runs in a fresh subprocess: one warm-up call on the first 1024 steps, then ``reps`` timed forward + backward
calls (fewer, at least one, once ``--budget-s`` seconds have gone into them; median reported, all kept). The
1-minute load average is recorded around every point. Writes ``--json`` (default bench/results/scan_busy.json)
after every point.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)  # `import kernels` must find the package, not bench/kernels.py

THREADS, DIM, NSTATE = 2, 256, 16
PATHS = ("slices", "regions")


def _spin() -> None:  # a background process that only burns CPU
    while True:
        pass


def run_point(path: str, log2: int, reps: int, busy: int, budget_s: float) -> dict:
    """Time ``reps`` scan forward + backward calls at L = 2^log2 with ``busy`` spinning processes (fewer, at
    least one, once ``budget_s`` seconds of timed calls have passed)."""
    import torch

    import kernels.scan.ref as ref

    torch.set_num_threads(THREADS)
    if path == "regions":
        ref.PARALLEL_MIN_ELEMENTS = 1 << 62  # no channel slices: one caller, OpenMP regions per op
    L = 1 << log2
    g = torch.Generator().manual_seed(0)
    u = torch.randn(1, DIM, L, generator=g, requires_grad=True)
    delta = (0.5 * torch.randn(1, DIM, L, generator=g)).requires_grad_()
    A = (-torch.rand(DIM, NSTATE, generator=g) - 0.5).requires_grad_()
    B = torch.randn(1, NSTATE, L, generator=g, requires_grad=True)
    C = torch.randn(1, NSTATE, L, generator=g, requires_grad=True)
    D = torch.randn(DIM, generator=g, requires_grad=True)
    z = torch.randn(1, DIM, L, generator=g, requires_grad=True)
    bias = torch.randn(DIM, generator=g, requires_grad=True)
    dout = torch.randn(1, DIM, L, generator=g)

    def call(n: int = L) -> tuple[float, float]:
        t0 = time.perf_counter()
        out = ref.selective_scan_ref(u[..., :n], delta[..., :n], A, B[..., :n], C[..., :n], D, z[..., :n], bias,
                                     delta_softplus=True)
        t1 = time.perf_counter()
        out.backward(dout[..., :n])
        t2 = time.perf_counter()
        for t in (u, delta, A, B, C, D, z, bias):
            t.grad = None
        return t1 - t0, t2 - t0

    call(min(L, 1024))  # warm-up (thread pool, allocator), short so that it costs little
    spinners = [mp.get_context("fork").Process(target=_spin, daemon=True) for _ in range(busy)]
    for p in spinners:
        p.start()
    try:
        time.sleep(0.5 if busy else 0)
        times, t_end = [], time.perf_counter() + budget_s
        while len(times) < reps and (not times or time.perf_counter() < t_end):
            times.append(call())
    finally:
        for p in spinners:
            p.terminate()
            p.join()
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"path": path, "L": L, "busy": busy, "reps": len(times), "fwd_bwd_s": round(med([t for _, t in times]), 4),
            "forward_s": round(med([f for f, _ in times]), 4), "fwd_bwd_s_all": [round(t, 4) for _, t in times],
            "threads": torch.get_num_threads(),
            "channel_slices": ref._POOL[1] is not None}  # whether the scan ran in the per-slice thread pool


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-log2", type=int, default=13)
    parser.add_argument("--max-log2", type=int, default=15)
    parser.add_argument("--busy", type=int, nargs="+", default=[0, 2],
                        help="numbers of background busy-loop processes to measure under (default: 0 2)")
    parser.add_argument("--path", choices=PATHS, action="append", help="repeatable; default: both")
    parser.add_argument("--reps", type=int, default=3, help="timed forward + backward calls per point (median)")
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="no further timed call once a point's calls took this long (default 60)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "scan_busy.json")
    parser.add_argument("--point", nargs=5, metavar=("PATH", "LOG2", "REPS", "BUSY", "BUDGET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.point:
        path, log2, reps, busy, budget = args.point
        print(json.dumps(run_point(path, int(log2), int(reps), int(busy), float(budget))))
        return 0
    if not 1 <= args.min_log2 <= args.max_log2:
        parser.error(f"need 1 <= --min-log2 <= --max-log2, got {args.min_log2} and {args.max_log2}")
    if args.reps < 1 or min(args.busy) < 0:
        parser.error("--reps must be >= 1 and every --busy >= 0")
    command = " ".join(["python bench/scan_busy.py", *(sys.argv[1:] if argv is None else argv)])
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS)}
    started, t_start, results = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter(), []

    def save(done: bool) -> None:
        rows = []
        for busy in args.busy:
            for L in sorted({r["L"] for r in results}):
                pts = {r["path"]: r for r in results if r["L"] == L and r["busy"] == busy and "fwd_bwd_s" in r}
                if len(pts) == 2:
                    rows.append({"L": L, "busy": busy, "slices_s": pts["slices"]["fwd_bwd_s"],
                                 "regions_s": pts["regions"]["fwd_bwd_s"],
                                 "regions_over_slices": round(pts["regions"]["fwd_bwd_s"] / pts["slices"]["fwd_bwd_s"], 2)})
        summary = {"command": command, "complete": done, "started_utc": started,
                   "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": THREADS},
                   "shape": {"batch": 1, "channels": DIM, "nstate": NSTATE, "B_C": "per batch (B, N, L)",
                             "dtype": "float32", "z": True, "delta_softplus": True},
                   "wall_s": round(time.perf_counter() - t_start, 1), "rows": rows, "points": results}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1) + "\n")

    i = 0
    for log2 in range(args.min_log2, args.max_log2 + 1):
        for busy in args.busy:
            paths = list(args.path or PATHS)
            for path in paths if i % 2 == 0 else paths[::-1]:  # alternate the order
                i += 1
                load0 = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--point", path, str(log2), str(args.reps), str(busy), str(args.budget_s)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
                point = {"path": path, "L": 1 << log2, "busy": busy}
                if proc.returncode != 0:
                    point["error"] = proc.stderr.strip().splitlines()[-1:]
                else:
                    point = json.loads(proc.stdout.strip().splitlines()[-1])
                point["load_avg_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
                results.append(point)
                print(json.dumps(point), flush=True)
                save(False)
    save(True)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

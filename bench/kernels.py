"""Benchmark the Triton kernels against the torch references; prints one JSON document.

    python bench/kernels.py                       # CUDA: B in {1, 8}, D in {128, 1024}, L = 2^10 .. 2^20, bf16
    python bench/kernels.py --op scan --log2-len 12 16 --out bench/results/
    python bench/kernels.py --cpu-smoke           # no GPU: tiny sizes through the Triton interpreter

For each (op, B, D, L) it times the forward and the forward + backward of ``impl="triton"`` and of the
torch baselines — fftconv: the torch.fft chain as HyenaDNA computes it (rfft, product, irfft, slice,
+ D·u) and our channel-grouped ``fftconv_ref``; scan: the chunked ``selective_scan_ref`` — and reports
the achieved bandwidth of the Triton kernels (the bytes a perfect kernel must move, over the time)
against the device's peak. ``--check`` (on by default) compares the bf16 Triton result at the largest L
to the fp32 reference. Out-of-memory cases are recorded as such. Timings are medians of CUDA-event runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

# This file is bench/kernels.py: as a script its folder comes first on sys.path, where ``import kernels``
# would find this file instead of the package. Put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", choices=("fftconv", "scan", "all"), default="all")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dim", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--log2-len", type=int, nargs=2, default=[10, 20], metavar=("LO", "HI"))
    p.add_argument("--dstate", type=int, default=16, help="scan state size N")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    p.add_argument("--budget-s", type=float, default=2.0, help="time per measurement (fewer reps if slow)")
    p.add_argument("--no-ref-above", type=int, default=None, metavar="LOG2",
                   help="skip the torch baselines above this log2 length (they can take minutes)")
    p.add_argument("--peak-gbs", type=float, default=None, help="peak memory bandwidth if not detected")
    p.add_argument("--no-check", action="store_true", help="skip the bf16-vs-fp32 accuracy check")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file or directory")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU through the Triton interpreter")
    return p.parse_args(argv)


def peak_bandwidth_gbs(device: torch.device, override: float | None) -> float | None:
    """Peak DRAM bandwidth: 2 (double data rate) x memory clock x bus width, from the device properties."""
    if override or device.type != "cuda":
        return override
    p = torch.cuda.get_device_properties(device)
    clk, bus = getattr(p, "memory_clock_rate", 0), getattr(p, "memory_bus_width", 0)  # kHz, bits
    return 2 * clk * 1e3 * bus / 8 / 1e9 if clk and bus else None


def timeit(fn, device: torch.device, budget_s: float) -> float:
    """Median milliseconds of ``fn()``: one warm-up, then as many runs as fit the budget (1 to 50)."""
    cuda = device.type == "cuda"

    def once():
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end)
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    first = once()
    reps = int(max(1, min(50, budget_s * 1e3 / max(first, 1e-3))))
    return statistics.median(once() for _ in range(reps))


def hyena_fftconv_torch(u, k, bias):
    """The torch.fft chain as HyenaDNA's fftconv_ref runs it (FFT size 2L, fp32 spectra, + D·u)."""
    L = u.shape[-1]
    n = 2 * L
    k_f = torch.fft.rfft(k.float(), n=n) / n
    u_f = torch.fft.rfft(u.float(), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :L]
    return (y + u * bias[:, None]).to(u.dtype)


def make_inputs(op, B, D, L, N, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)

    def r(*s, scale=1.0):
        return (torch.randn(*s, generator=g, device=device) * scale).to(dtype)

    if op == "fftconv":
        decay = torch.exp(-torch.arange(L, device=device) / (L / 8))
        return dict(u=r(B, D, L), k=(torch.randn(D, L, generator=g, device=device) * decay / 8).to(dtype),
                    bias=r(D))
    return dict(u=r(B, D, L), delta=r(B, D, L, scale=0.5), A=-torch.rand(D, N, generator=g, device=device) - 0.1,
                B=r(B, N, L), C=r(B, N, L), D=torch.randn(D, device=device), z=r(B, D, L),
                delta_bias=torch.randn(D, device=device) - 2)


def useful_bytes(op, B, D, L, N, elt):
    """(forward, forward + backward) bytes a perfect kernel moves: each input read once, each output written once."""
    if op == "fftconv":
        fwd = 2 * B * D * L * elt + D * L * elt  # u, y, k
        return fwd, fwd + 3 * B * D * L * elt + 2 * D * L * elt  # + g, u, du; k, dk
    fwd = 4 * B * D * L * elt + 2 * B * N * L * elt  # u, delta, z, out; B, C
    return fwd, fwd + 7 * B * D * L * elt + 4 * B * N * L * elt  # + u, delta, z, dout, du, ddelta, dz; B, C, dB, dC


def run_impl(op, impl, x, backward: bool):
    import kernels

    leaves = {k: (v.detach().requires_grad_(backward) if v.is_floating_point() else v) for k, v in x.items()}
    if op == "fftconv":
        y = hyena_fftconv_torch(**leaves) if impl == "hyena_torch_fft" else kernels.fftconv(**leaves, impl=impl)
    else:
        y = kernels.selective_scan(**leaves, delta_softplus=True, impl=impl)
    if backward:
        y.backward(torch.ones_like(y))
    return y


def bench_case(op, B, D, L, args, device, peak):
    dtype = DTYPES[args.dtype]
    row = dict(op=op, B=B, D=D, L=L, dtype=args.dtype)
    impls = ["triton", "torch"] + (["hyena_torch_fft"] if op == "fftconv" else [])
    if args.no_ref_above is not None and L > 2 ** args.no_ref_above:
        impls = ["triton"]
    fwd_b, all_b = useful_bytes(op, B, D, L, args.dstate, torch.finfo(dtype).bits // 8)
    for impl in impls:
        try:
            x = make_inputs(op, B, D, L, args.dstate, dtype, device)
            row[f"{impl}_fwd_ms"] = timeit(lambda: run_impl(op, impl, x, False), device, args.budget_s)
            row[f"{impl}_fwd_bwd_ms"] = timeit(lambda: run_impl(op, impl, x, True), device, args.budget_s)
        except torch.OutOfMemoryError:
            row[f"{impl}_error"] = "out of memory"
        finally:
            x = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for key in ("fwd", "fwd_bwd"):
        t = row.get(f"triton_{key}_ms")
        if t is None:
            continue
        gbs = (fwd_b if key == "fwd" else all_b) / (t * 1e-3) / 1e9
        row[f"triton_{key}_GBps"] = _sig(gbs)
        if peak:
            row[f"triton_{key}_frac_peak"] = _sig(gbs / peak)
        for base in impls[1:]:
            if row.get(f"{base}_{key}_ms"):
                row[f"speedup_{key}_vs_{base}"] = _sig(row[f"{base}_{key}_ms"] / t)
    return row


def _sig(x: float) -> float:
    return float(f"{x:.3g}")


def accuracy_check(op, L, args, device):
    """max |triton(bf16) - ref(fp32)| / max |ref| at B = 1, D = 128 (on CPU smoke: D = 2)."""
    import kernels

    D = 2 if args.cpu_smoke else 128
    x = make_inputs(op, 1, D, L, args.dstate, torch.bfloat16, device)
    x32 = {k: v.float() for k, v in x.items()}
    if op == "fftconv":
        got, ref = kernels.fftconv(**x, impl="triton"), kernels.fftconv(**x32, impl="torch")
    else:
        got = kernels.selective_scan(**x, delta_softplus=True, impl="triton")
        ref = kernels.selective_scan(**x32, delta_softplus=True, impl="torch")
    err = ((got.float() - ref).abs().max() / ref.abs().max()).item()
    return dict(op=op, B=1, D=D, L=L, input_dtype="bf16", ref_dtype="fp32", max_rel_err=err)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cpu_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported (by kernels)
        args.batch, args.dim, args.log2_len, args.dstate, args.budget_s = [1], [2], [8, 8], 4, 0.0
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("bench/kernels.py: no CUDA device here. The Triton kernels are benchmarked on a GPU; run "
              "`python bench/kernels.py --cpu-smoke` to exercise this script through the interpreter.",
              file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    import triton

    peak = peak_bandwidth_gbs(device, args.peak_gbs)
    ops = ("fftconv", "scan") if args.op == "all" else (args.op,)
    lens = [2 ** p for p in range(args.log2_len[0], args.log2_len[1] + 1)]
    rows = [bench_case(op, B, D, L, args, device, peak) for op in ops for B in args.batch for D in args.dim
            for L in lens]
    checks = [] if args.no_check else [accuracy_check(op, lens[-1], args, device) for op in ops]
    report = dict(device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (Triton interpreter)",
                  peak_GBps=peak, torch=torch.__version__, triton=triton.__version__, cpu_smoke=args.cpu_smoke,
                  command="python bench/kernels.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  results=rows, accuracy=checks)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        path = args.out
        if path.is_dir() or not path.suffix:
            name = report["device"].split(" (")[0].replace(" ", "_")
            path = path / f"kernels-{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

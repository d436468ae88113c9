"""Data pipeline benchmark; prints JSON. Run by hand: ``python bench/data.py [--fasta F] [--copies N]``.

Preparation: bases/s of ``data_prep shards`` with 1 and 2 workers next to the raw read rate of the same
FASTA measured in the same run (``raw_file``: reading its bytes; ``raw_bases``: reading them and removing
line ends, the least any FASTA consumer must do to hold the bases; ``pyfaidx``: 1 Mbp slices with
``as_raw=True``, the HyenaDNA way; ``sha256``: hashing the same bytes, which every shard needs), and the CPU
cores the preparation kept busy (a worker hashes in a second thread, so one worker can use two). Loading:
tokens/s of :class:`pretrain.data.WindowStream` at L = 1k, 32k and 1M, in-process (``workers0``: one
process doing all a worker does plus the id/label/mask expansion) and through the DataLoader with 1 and 2
workers.

Without ``--fasta`` the input is ``data/sample/hg38/hg38_subset.fa.gz`` (5.35 Mb of real GRCh38), decompressed and repeated
``--copies`` times under new record names, so the timings cover tens of megabases of real sequence.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_prep.fasta import load_index  # noqa: E402
from data_prep.prep import PrepConfig, prepare  # noqa: E402

SAMPLE_FASTA = ROOT / "data" / "sample" / "hg38" / "hg38_subset.fa.gz"


def make_fasta(src: Path, copies: int, dest: Path) -> Path:
    """``src`` repeated ``copies`` times, record names suffixed ``_copyK`` (bytes otherwise unchanged)."""
    data = gzip.decompress(src.read_bytes()) if src.suffix == ".gz" else src.read_bytes()
    with open(dest, "wb") as out:
        for k in range(copies):
            out.write(_rename(data, k))
    return dest


def _rename(data: bytes, k: int) -> bytes:
    lines = data.split(b"\n")
    return b"\n".join(line.split()[0] + f"_copy{k}".encode() if line.startswith(b">") else line for line in lines)


def _best(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def raw_rates(fasta: Path, repeats: int) -> dict:
    """Bytes/s and bases/s of reading the FASTA sequentially, and pyfaidx bases/s."""
    import pyfaidx

    size = fasta.stat().st_size
    entries, _ = load_index(fasta)
    bases = sum(e.length for e in entries)

    def read_bytes():
        with open(fasta, "rb", buffering=0) as fh:
            while fh.read(16 << 20):
                pass

    def read_bases():
        with open(fasta, "rb", buffering=0) as fh:
            while block := fh.read(16 << 20):
                block.replace(b"\n", b"")  # the fastest line-end removal in Python (what pyfaidx uses)

    def sha256_bytes():  # what the manifest's per-shard checksum costs per byte
        h = hashlib.sha256()
        with open(fasta, "rb", buffering=0) as fh:
            while block := fh.read(16 << 20):
                h.update(block)

    def read_pyfaidx():
        fa = pyfaidx.Fasta(str(fasta), as_raw=True)
        for e in entries:
            for s in range(0, e.length, 1 << 20):
                fa[e.name][s:s + (1 << 20)]

    read_bytes()  # warm the page cache: every rate below is from memory
    return {"fasta_bytes": size, "fasta_bases": bases,
            "raw_file_bytes_per_s": size / _best(read_bytes, repeats),
            "raw_bases_per_s": bases / _best(read_bases, repeats),
            "pyfaidx_bases_per_s": bases / _best(read_pyfaidx, repeats),
            "sha256_bytes_per_s": size / _best(sha256_bytes, repeats)}


def prep_rate(fasta: Path, work: Path, workers: int, repeats: int) -> tuple[float, float]:
    """``(bases/s, cores)`` of a full preparation (one train split, default chunk length, 8 Mbase shards so
    that two workers have several shards to share); ``cores``: CPU seconds (this process and its worker
    processes, user + system) per wall second of the fastest run."""
    bases = sum(e.length for e in load_index(fasta)[0])
    out = work / f"prep{workers}"
    best = (float("inf"), 0.0)
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        t0, c0 = time.perf_counter(), _cpu_seconds()
        prepare(PrepConfig(fasta=fasta, out=out, workers=workers, progress=False, min_acgt=0.0, shard_size=1 << 23),
                log=lambda *_: None)
        best = min(best, (time.perf_counter() - t0, _cpu_seconds() - c0))
    shutil.rmtree(out, ignore_errors=True)
    return bases / best[0], best[1] / best[0]


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished child processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def loader_rates(shards: Path, seq_len: int, seconds: float) -> dict:
    """Tokens/s of WindowStream at ``seq_len`` (micro-batch ~1M tokens) with 0, 1 and 2 workers."""
    from pretrain.data import WindowStream

    micro_batch = max(1, (1 << 20) // seq_len)
    out = {"micro_batch": micro_batch}
    for workers in (0, 1, 2):
        stream = WindowStream(shards, seq_len=seq_len, micro_batch=micro_batch, num_workers=workers, rc_prob=0.5)
        it = iter(stream)
        next(it)  # worker start-up is not throughput
        tokens, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            tokens += next(it)["input_ids"].numel()
        out[f"workers{workers}_tokens_per_s"] = tokens / (time.perf_counter() - t0)
        del it
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fasta", type=Path, help="FASTA to benchmark (default: the sample hg38 subset, repeated)")
    p.add_argument("--copies", type=int, default=32, help="repeats of the sample subset (default 32 = 171 Mb)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest counts")
    p.add_argument("--seconds", type=float, default=3.0, help="seconds per loader measurement")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="longdna-bench-") as tmp:
        work = Path(tmp)
        fasta = args.fasta or make_fasta(SAMPLE_FASTA, args.copies, work / "bench.fa")
        raw = raw_rates(fasta, args.repeats)
        prep = {}
        for w in (1, 2):
            prep[f"workers{w}_bases_per_s"], prep[f"workers{w}_cpu_cores"] = prep_rate(fasta, work, w, args.repeats)
        prep["workers1_over_raw_bases"] = prep["workers1_bases_per_s"] / raw["raw_bases_per_s"]
        prep["workers2_per_worker_over_raw_bases"] = prep["workers2_bases_per_s"] / 2 / raw["raw_bases_per_s"]
        shards = work / "loader-shards"
        prepare(PrepConfig(fasta=fasta, out=shards, progress=False, min_acgt=0.0), log=lambda *_: None)
        loader = {f"L{L}": loader_rates(shards, L, args.seconds) for L in (1024, 32768, 1 << 20)}
    import numpy
    import torch

    print(json.dumps({
        "bench": "data", "fasta": str(args.fasta or f"{os.path.relpath(SAMPLE_FASTA, ROOT)} x{args.copies}"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": numpy.__version__,
                    "torch": torch.__version__,
                    # other processes competing for the CPUs depress every figure: run the benchmark alone
                    "loadavg_1min_before_after": [load_before, os.getloadavg()[0]]},
        "read": raw, "prep": prep, "loader": loader,
        "targets": {"prep_over_raw_per_worker": 0.5, "loader_tokens_per_s_per_worker_at_1M": 1e8},
    }, indent=1))


if __name__ == "__main__":
    main()

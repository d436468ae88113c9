"""Observability: a console line, a ``metrics.jsonl`` record and TensorBoard scalars per logged step (rank 0).

MFU = achieved model FLOP/s / peak FLOP/s of the devices used. Achieved FLOP/s is the model's analytic training
FLOPs per token (``DNALM.flops_per_token(seq_len)``: forward + backward, documented per architecture in
``models``) times the tokens per second of the whole job; the peak is ``train.peak_flops`` (per device) if set,
else the dense tensor-core peak of a known GPU at the run's precision, else unknown: on a CPU, or an unknown
GPU, MFU is reported as null rather than a guessed figure.
"""

from __future__ import annotations

import json
import math
import resource
import sys
from pathlib import Path

import torch

# Dense (no sparsity) peak FLOP/s per device from the vendors' data sheets: (bf16 tensor core, fp32 via TF32).
_GPU_PEAKS = {
    "H200": (989e12, 494e12),
    "H100 SXM": (989e12, 494e12),
    "H100 NVL": (835e12, 418e12),
    "H100 PCIE": (756e12, 378e12),
    "H100": (989e12, 494e12),
    "GH200": (989e12, 494e12),
    "A100": (312e12, 156e12),
    "A10G": (70e12, 35e12),
    "L40S": (362e12, 183e12),
    "L4": (121e12, 60e12),
}


def peak_flops_per_device(precision: str, configured: float | None = None) -> float | None:
    """Peak FLOP/s of one device for MFU: the configured figure, a known GPU's, or ``None`` (CPU / unknown)."""
    if configured is not None:
        return configured
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name().upper()
    for key, (bf16, fp32) in _GPU_PEAKS.items():  # longer names first in the table where they overlap
        if key in name:
            return bf16 if precision == "bf16" else fp32
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak_per_device: float | None, num_devices: int) -> float | None:
    if peak_per_device is None or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / (peak_per_device * num_devices)


def max_memory_gb() -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


def _finite_or_none(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no inf/nan; the console line still shows them
    return value


def truncate_after(path: Path, step: int) -> int:
    """Drop ``metrics.jsonl`` records past ``step`` (a resumed run logs those steps again); return how many."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return len(lines) - len(kept)


class MetricsLogger:
    """Writes metrics on rank 0 only (other ranks get a logger that does nothing)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, resume_step: int | None = None, formatter=None):
        self.enabled = enabled
        self.formatter = formatter or format_line  # (record, split) -> console line; the fine-tuning app has its own
        self.path = Path(run_dir) / "metrics.jsonl"
        self._tb = None
        if not enabled:
            return
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events a crashed run wrote past the checkpoint it resumes from.
        self._tb = SummaryWriter(str(Path(run_dir) / "tb"),
                                 purge_step=None if resume_step is None else resume_step + 1)
        self._file = self.path.open("a")

    def log(self, record: dict, split: str = "train") -> None:
        """Log one record (must hold ``step``); eval records carry ``"split": "valid"``."""
        if not self.enabled:
            return
        record = dict(record)
        if split != "train":
            record["split"] = split
        self._file.write(json.dumps({k: _finite_or_none(v) for k, v in record.items()}) + "\n")
        self._file.flush()
        for key, value in record.items():
            if key not in ("step", "split") and isinstance(value, (int, float)) and value is not None:
                self._tb.add_scalar(f"{split}/{key}", value, record["step"])
        self._tb.flush()
        print(self.formatter(record, split), file=sys.stdout, flush=True)

    def message(self, text: str) -> None:
        if self.enabled:
            print(text, file=sys.stdout, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            self._tb.close()


def format_line(record: dict, split: str = "train") -> str:
    """The console line for one record."""
    def num(key, fmt):
        value = record.get(key)
        return "-" if value is None else format(value, fmt)

    if split != "train":
        return (f"[{split}] step {record['step']} | L {record.get('seq_len')} | loss {num('loss', '.4f')} | "
                f"ppl {num('ppl', '.4f')} | tokens {record.get('eval_tokens')}")
    return (f"step {record['step']} | L {record.get('seq_len')} | loss {num('loss', '.4f')} | ppl {num('ppl', '.3f')} "
            f"| lr {num('lr', '.2e')} | gnorm {num('grad_norm', '.3f')} | {num('tokens_per_s', ',.0f')} tok/s "
            f"| mfu {num('mfu', '.3f')} | mem {num('max_mem_gb', '.2f')} GB")

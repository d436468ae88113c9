"""Launching the training app in tests: tiny run configs, multi-process launches, reading metrics.

Runs are launched the way ``srun`` launches them (one ``python pretrain/main.py`` per rank with RANK /
WORLD_SIZE / MASTER_* in the environment) so that each rank can be signalled by its PID, or through the
``deepspeed`` launcher where the launcher itself is under test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "pretrain" / "main.py"


def tiny_args(shards: Path, out_dir: Path, name: str, **overrides) -> list[str]:
    """Overrides for a tiny Hyena on 2 ranks: windows 64 (4 steps) then 128, 1024 tokens per step,
    micro-batches of 256 tokens (so gradient accumulation is exercised), a 40-step LR schedule."""
    args = {
        "data.path": shards, "run.out_dir": out_dir, "run.name": name, "run.seed": 7,
        "model.d_model": 32, "model.n_layer": 1, "model.d_inner": 64, "model.l_max": 128,
        "train.seq_len": 128, "train.warmup_stages": "[{seq_len: 64, tokens: 4096}]",
        "train.tokens_per_step": 1024, "train.micro_batch_tokens": 256, "train.max_steps": 8,
        "train.lr_decay_steps": 40, "train.lr": 3e-3, "train.log_every": 1, "train.eval_every": 4,
        "train.eval_batches": 2, "train.ckpt_every": 4, "train.keep_checkpoints": 3, "parallel.zero_stage": 1,
    }
    args.update(overrides)
    return [f"{k}={v}" for k, v in args.items()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launch:
    procs: list[subprocess.Popen]
    logs: list[Path]

    def wait(self, timeout: float = 300) -> list[int]:
        return [p.wait(timeout=timeout) for p in self.procs]

    def output(self, rank: int = 0) -> str:
        return self.logs[rank].read_text()


def start_ranks(args: list[str], log_dir: Path, nproc: int = 2, script: Path = MAIN,
                env: dict | None = None) -> Launch:
    """Start ``nproc`` ranks of ``script args`` (srun style) with output in ``log_dir/rank-N.log``."""
    log_dir.mkdir(parents=True, exist_ok=True)
    base = dict(os.environ, **(env or {}), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE=str(nproc),
                LOCAL_WORLD_SIZE=str(nproc), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    procs, logs = [], []
    for rank in range(nproc):
        env = dict(base, RANK=str(rank), LOCAL_RANK=str(rank))
        log = log_dir / f"rank-{rank}.log"
        with log.open("w") as f:
            procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=REPO, env=env,
                                          stdout=f, stderr=subprocess.STDOUT))
        logs.append(log)
    return Launch(procs, logs)


def run_ranks(args: list[str], log_dir: Path, nproc: int = 2, script: Path = MAIN) -> Launch:
    """Start the ranks, wait, and fail with their output unless every rank exits 0."""
    launch = start_ranks(args, log_dir, nproc, script)
    codes = launch.wait()
    if any(codes):
        pytest.fail(f"ranks exited {codes}; rank 0 output:\n{launch.output(0)[-4000:]}\n"
                    f"rank 1 output:\n{launch.output(min(1, nproc - 1))[-2000:]}")
    return launch


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """``(train records, valid records)`` of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "split" not in r], [r for r in records if r.get("split") == "valid"]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)[0]}


def exported_logits(run_dir: Path, out: Path):
    """``python -m pretrain.export run_dir --out out``, then the exported model's logits on two fixed windows of
    128 bases (token ids 7..10)."""
    import torch

    from models import from_pretrained

    done = subprocess.run([sys.executable, "-m", "pretrain.export", str(run_dir), "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    ids = torch.randint(7, 11, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return from_pretrained(out)(ids)

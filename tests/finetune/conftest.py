"""Fixtures of the fine-tuning tests: GenomicBenchmarks sequences split into files, a tiny exported backbone, and
a launcher for ``finetune/main.py`` (one process, as ``python finetune/main.py`` runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MAIN = REPO / "finetune" / "main.py"


@pytest.fixture(scope="session")
def gb_files(sample_data, tmp_path_factory) -> dict[str, Path]:
    """The real GenomicBenchmarks human_nontata_promoters test file (9,034 x 251 bp) split by a seeded draw into
    ``train`` (2,000), ``test`` (300) and ``small`` (64, for runs that only need to run) files."""
    lines = (sample_data / "genomic_benchmarks" / "sequences" / "human_nontata_promoters.test.tsv").read_text()
    header, *rows = lines.splitlines()
    order = np.random.default_rng(0).permutation(len(rows))
    out = tmp_path_factory.mktemp("gb")
    files = {}
    for name, idx in {"train": order[:2000], "test": order[-300:], "small": order[2000:2064]}.items():
        files[name] = out / f"{name}.tsv"
        files[name].write_text(header + "\n" + "".join(rows[i] + "\n" for i in idx))
    return files


def tiny_args(out_dir: Path, name: str, train: Path, test: Path, **overrides) -> list[str]:
    """Overrides for a tiny Hyena fine-tuned on sequence files (l_max 256 fits the 251 bp sequences)."""
    args = {"run.out_dir": out_dir, "run.name": name, "run.seed": 3, "data.format": "tsv", "data.train": train,
            "data.test": test, "model.d_model": 16, "model.n_layer": 1, "model.l_max": 256,
            "train.micro_batch": 8, "train.max_steps": 4, "train.lr": 3e-3, "train.log_every": 1}
    args.update(overrides)
    return [f"{k}={v}" for k, v in args.items()]


def run_finetune(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """``python finetune/main.py ARGS`` in one process; output captured."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    return subprocess.run([sys.executable, str(MAIN), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]

"""Fixtures of the training-app tests (launch code: ``launch_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from launch_helpers import run_ranks, tiny_args


@pytest.fixture(scope="session")
def hg38_shards(hg38_subset, tmp_path_factory) -> Path:
    """Shards of the real GRCh38 subset: train = chr2 + chrM, valid = chr20 (a held-out chromosome)."""
    from data_prep.prep import PrepConfig, prepare

    out = tmp_path_factory.mktemp("hg38") / "shards"
    prepare(PrepConfig(fasta=hg38_subset, out=out, valid_chroms=["chr20"], progress=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """One directory for the app tests' runs (``run.out_dir``) and their logs."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def straight(hg38_shards, runs) -> Path:
    """The reference run: :func:`launch_helpers.tiny_args` straight through 8 steps on 2 ranks."""
    run_ranks(tiny_args(hg38_shards, runs, "straight"), runs / "logs-straight")
    return runs / "straight"

"""Fixtures of the training-app tests (launch code: ``launch_helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import slurm_cluster
from launch_helpers import run_ranks, tiny_args


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> Path:
    """One directory for the app tests' runs (``run.out_dir``) and their logs."""
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def straight(hg38_shards, runs) -> Path:
    """The reference run: :func:`launch_helpers.tiny_args` straight through 8 steps on 2 ranks."""
    run_ranks(tiny_args(hg38_shards, runs, "straight"), runs / "logs-straight")
    return runs / "straight"


@pytest.fixture(scope="session")
def slurm():
    """A SLURM cluster with two nodes for the whole run (:mod:`slurm_cluster`): the configured one, or a local one
    started here (as root, with CI=true or LONGDNA_LOCAL_SLURM=1) and stopped at the end, even after a failure.
    Without one the SLURM tests skip, except under CI=true, where they fail: CI must run them."""
    try:
        cluster = slurm_cluster.find_or_start()
    except slurm_cluster.Unavailable as err:
        if slurm_cluster.in_ci():
            pytest.fail(f"CI=true but no SLURM cluster: {err}", pytrace=False)
        pytest.skip(str(err))
    try:
        yield cluster
    finally:
        cluster.stop()

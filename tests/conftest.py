"""Shared test set-up.

Triton kernels run through the interpreter on CPU: TRITON_INTERPRET must be set before any kernel is
decorated, hence here, before anything imports triton. Tests that read the real genome data under
``../shared/data`` (next to the repository) skip with a reason when it is absent (users' clones).
"""

import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
SHARED_GOLDEN = SHARED / "golden"


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (it sits next to the repository in CI; absent in a plain clone)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: real GRCh38 regions, other species, GenomicBenchmarks sequences."""
    return _require(SHARED_DATA, "the shared real-sequence data")


@pytest.fixture(scope="session")
def hg38_subset(shared_data) -> Path:
    """5.35 Mb of real GRCh38 (chr2:1-2,333,275, chr20:1-3,000,000, chrM) at genome coordinates."""
    return _require(shared_data / "hg38" / "hg38_subset.fa", "hg38_subset.fa")


@pytest.fixture(scope="session")
def golden() -> Path:
    """``../shared/golden``: reference-implementation tensors (HyenaDNA, mamba_ssm)."""
    return _require(SHARED_GOLDEN, "the golden vectors")

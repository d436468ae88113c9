"""Shared test set-up.

Triton kernels run through the interpreter on CPU: TRITON_INTERPRET must be set before any kernel is
decorated, hence here, before anything imports triton.

Real data comes from ``data/sample`` in the repository (see its README), so a bare clone runs every test offline.
There, plain-text sources are stored gzipped or bgzipped; the ``sample_data`` fixture lays out the folder once per
run in a temporary directory where every ``X.gz`` is also present decompressed as ``X``, and adds
``hg38/chr20_1-3000000.hg38.fa`` (byte-identical to the ``chr20`` record of the hg38 subset, checked by sha256).
"""

import gzip
import hashlib
import os
import shutil
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample"
CHR20_SHA256 = "fcae4f1af1adb7cd7ab1ed265a7b4fb6cb754fda60c853cfb17887ae6595dc6c"


def _lay_out(src: Path, dst: Path) -> None:
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if path.is_dir():
            (dst / rel).mkdir(parents=True, exist_ok=True)
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / rel)
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fin, open(dst / rel.with_suffix(""), "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
    subset = (dst / "hg38" / "hg38_subset.fa").read_bytes()
    start = subset.index(b">chr20\n")
    chr20 = subset[start:subset.index(b">", start + 1)]
    assert hashlib.sha256(chr20).hexdigest() == CHR20_SHA256, "data/sample/hg38/hg38_subset.fa.gz: chr20 changed"
    (dst / "hg38" / "chr20_1-3000000.hg38.fa").write_bytes(chr20)


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """``data/sample`` laid out with plain copies: real GRCh38 regions, other species, GenomicBenchmarks, golden."""
    dst = tmp_path_factory.mktemp("sample_data")
    _lay_out(SAMPLE, dst)
    return dst


@pytest.fixture(scope="session")
def hg38_subset(sample_data) -> Path:
    """5.35 Mb of real GRCh38 (chr2:1-2,333,275, chr20:1-3,000,000, chrM) at genome coordinates (plain FASTA)."""
    return sample_data / "hg38" / "hg38_subset.fa"


@pytest.fixture(scope="session")
def hg38_shards(hg38_subset, tmp_path_factory) -> Path:
    """Shards of the real GRCh38 subset (``data_prep``): train = chr2 + chrM, valid = chr20 (a held-out
    chromosome); written once per test session, shared by the training-app and parallel-training tests."""
    from data_prep.prep import PrepConfig, prepare

    out = tmp_path_factory.mktemp("hg38") / "shards"
    prepare(PrepConfig(fasta=hg38_subset, out=out, valid_chroms=["chr20"], progress=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def golden() -> Path:
    """``data/sample/golden``: reference-implementation tensors (HyenaDNA, mamba_ssm). Read-only: copy to modify."""
    return SAMPLE / "golden"

"""``data/sample`` is what its README says: every file listed in SHA256SUMS, with that checksum, and nothing else."""

import hashlib
from pathlib import Path

# Not `from conftest import ...`: with several conftest.py files in the tree, the module named `conftest` is
# whichever was imported last (e.g. tests/pretrain/conftest.py in a whole-suite run).
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def test_every_sample_file_matches_its_checksum():
    listed = {}
    for line in (SAMPLE / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    present = {p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*") if p.is_file()}
    assert present - {"README.md", "SHA256SUMS"} == set(listed)
    for rel, digest in listed.items():
        assert hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest() == digest, rel


def test_size_stays_small():
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 20 * 2**20

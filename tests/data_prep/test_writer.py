"""The shard writer's sha256 (computed in a second thread while writing) against the written file."""

import hashlib
import tarfile

import pytest

from data_prep import writer as writer_module
from data_prep.writer import ShardWriter


@pytest.mark.parametrize("batch", [1, 700, 1 << 20])
def test_sha256_and_offsets_match_the_file(tmp_path, monkeypatch, batch):
    monkeypatch.setattr(writer_module, "_OUTPUT_BATCH", batch)  # one piece per batch .. many samples per batch
    path = tmp_path / "train" / "shard-000000.tar"
    w = ShardWriter(path)
    samples = {f"train-{i:09d}": (b"ACGTn" * (37 * i + 1))[:1000 * i + 3] for i in range(12)}
    offsets = {key: w.add(key, {"i": i}, seq) for i, (key, seq) in enumerate(samples.items())}
    sha, size = w.close()
    data = path.read_bytes()
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert not list(path.parent.glob("*.tmp*"))
    with tarfile.open(path) as tar:
        seqs = [m for m in tar.getmembers() if m.name.endswith(".seq")]
        assert [m.name for m in seqs] == [f"{k}.seq" for k in samples]
        for m in seqs:
            key = m.name[:-4]
            assert m.offset_data == offsets[key] and tar.extractfile(m).read() == samples[key]


def test_abort_leaves_nothing(tmp_path):
    path = tmp_path / "shard-000000.tar"
    w = ShardWriter(path)
    w.add("train-000000000", {}, b"ACGT" * 300_000)
    w.abort()
    assert list(tmp_path.iterdir()) == []

"""Round trip on real GRCh38: every kept base equals the FASTA (read independently with pyfaidx and tarfile),
kept + dropped = the split's region bases, splits are disjoint; both split modes, bgzipped input, workers."""

import json
import os
import tarfile

import numpy as np
import pyfaidx
import pytest
import webdataset as wds

from data_prep.format import load_manifest
from data_prep.prep import PrepConfig, prepare




def _prep(fasta, out, **kw):
    kw.setdefault("progress", False)
    return prepare(PrepConfig(fasta=fasta, out=out, **kw), log=lambda *_: None)


def _covered(regions_by_split, sizes):
    """Boolean per-base masks {split: {chrom: mask}} of a set of intervals."""
    out = {}
    for split, spans in regions_by_split.items():
        masks = out.setdefault(split, {})
        for chrom, start, end in spans:
            masks.setdefault(chrom, np.zeros(sizes[chrom], dtype=bool))[start:end] = True
    return out


def check_roundtrip(out, reference_fasta, expected_regions):
    """Independent checks of a prepared folder; ``expected_regions``: {split: [(chrom, start, end)]}."""
    manifest = load_manifest(out)
    ref = pyfaidx.Fasta(str(reference_fasta), as_raw=True)
    sizes = {name: len(ref[name]) for name in ref.keys()}
    expected = _covered(expected_regions, sizes)
    min_acgt = manifest.data["min_acgt"]
    chunks = {}
    for split in manifest.splits:
        sp = manifest.split(split)
        spans = []
        for shard in sp["shards"]:
            with tarfile.open(out / shard["path"]) as tar:
                members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
            assert len(members) == 2 * shard["samples"]
            for key, chrom, start, end, _ in shard["index"]:
                assert json.loads(members[f"{key}.json"]) == {"chrom": chrom, "start": start, "end": end, "split": split}
                assert members[f"{key}.seq"] == ref[chrom][start:end].encode(), key
                assert end - start <= manifest.chunk_len
                spans.append((chrom, start, end))
            for key, chrom, start, end, n in shard["dropped"]:
                seq = ref[chrom][start:end]
                assert seq.upper().count("N") == n and (end - start - n) < min_acgt * (end - start)
                spans.append((chrom, start, end))
        assert sp["bases"] + sp["dropped_bases"] == sp["region_bases"]
        assert sp["region_bases"] == sum(int(m.sum()) for m in expected[split].values())
        chunks[split] = spans
    got = _covered(chunks, sizes)
    assert sorted(got) == sorted(expected)
    for split in expected:  # chunks tile exactly the split's bases, without overlap
        assert sum(e - s for _, s, e in chunks[split]) == sum(int(m.sum()) for m in got[split].values())
        for chrom, mask in expected[split].items():
            assert (got[split][chrom] == mask).all()
    for a in got:  # splits are disjoint
        for b in got:
            if a < b:
                for chrom in set(got[a]) & set(got[b]):
                    assert not (got[a][chrom] & got[b][chrom]).any()
    return manifest


def test_chromosome_lists_round_trip(hg38_subset, tmp_path):
    out = tmp_path / "shards"
    _prep(hg38_subset, out, valid_chroms=["chr20"], test_chroms=["chrM"], chunk_len=100_000, shard_size=1 << 20)
    m = check_roundtrip(out, hg38_subset, {"train": [("chr2", 0, 2_333_275)], "valid": [("chr20", 0, 3_000_000)],
                                           "test": [("chrM", 0, 16_569)]})
    valid = m.split("valid")
    assert valid["dropped_chunks"] == 1 and valid["dropped_bases"] == 100_000  # chr20 opens with 60,000 N
    assert m.split("train")["soft_masked_bases"] > 0 and m.split("valid")["soft_masked_bases"] == 0
    assert len(m.split("train")["shards"]) == 3


def test_bed_split_round_trip(sample_data, hg38_subset, tmp_path):
    bed = sample_data / "hg38" / "human-sequences.subset.bed"
    out = tmp_path / "shards"
    _prep(hg38_subset, out, bed=bed, chunk_len=65_537, shard_size=1 << 20)
    rows = [line.split() for line in bed.read_text().splitlines() if line.strip()]
    expected = {}
    for chrom, start, end, split in rows:
        expected.setdefault(split, []).append((chrom, int(start), int(end)))
    m = check_roundtrip(out, hg38_subset, expected)
    assert sorted(m.splits) == ["train", "valid"]
    assert m.data["split_definition"]["mode"] == "bed" and len(m.data["split_definition"]["bed_sha256"]) == 64


def test_bgzipped_fasta_round_trip_with_two_workers(sample_data, hg38_subset, tmp_path):
    gz = sample_data / "hg38" / "chr2_1-2333275.hg38.fa.gz"
    out = tmp_path / "gz"
    _prep(gz, out, valid_chroms=[], chunk_len=100_001, shard_size=300_000, workers=2)
    # hg38_subset.fa holds the same chr2 bases (re-wrapped), so it serves as the independent reference
    m = check_roundtrip(out, hg38_subset, {"train": [("chr2", 0, 2_333_275)]})
    assert m.split("train")["samples"] == 24


def test_workers_write_byte_identical_shards(hg38_subset, tmp_path):
    kw = dict(valid_chroms=["chr20"], chunk_len=50_000, shard_size=400_000)
    a = _prep(hg38_subset, tmp_path / "a", workers=1, **kw)
    b = _prep(hg38_subset, tmp_path / "b", workers=2, **kw)
    assert a["splits"] == b["splits"]


def test_rerun_of_a_finished_folder_rewrites_nothing(hg38_subset, tmp_path):
    out = tmp_path / "s"
    kw = dict(valid_chroms=["chr20"], chunk_len=100_000, shard_size=500_000)
    first = _prep(hg38_subset, out, **kw)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.tar")}
    logs = []
    again = prepare(PrepConfig(fasta=hg38_subset, out=out, progress=False, **kw), log=logs.append)
    assert again["splits"] == first["splits"] and "up to date" in logs[-1]
    assert mtimes == {p: p.stat().st_mtime_ns for p in out.glob("*/shard-*.tar")}


def test_a_crashed_run_continues_keeping_verified_shards(hg38_subset, tmp_path, monkeypatch):
    import data_prep.prep as prep_module

    kw = dict(valid_chroms=["chr20"], chunk_len=100_000, shard_size=500_000)
    clean = _prep(hg38_subset, tmp_path / "clean", **kw)
    out = tmp_path / "s"
    real_write, written = prep_module.write_shard, []

    def crash_after_five(task, progress=None):
        if len(written) == 5:
            raise RuntimeError("simulated crash")
        written.append(task.relpath)
        return real_write(task, progress)

    monkeypatch.setattr(prep_module, "write_shard", crash_after_five)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _prep(hg38_subset, out, **kw)
    monkeypatch.setattr(prep_module, "write_shard", real_write)
    assert not (out / "manifest.json").exists() and len(list((out / ".partial").glob("*.json"))) == 5
    (out / written[0]).unlink()  # lost
    with open(out / written[1], "r+b") as fh:  # damaged
        fh.seek(2000)
        fh.write(b"XXXX")
    kept = {out / p: (out / p).stat().st_mtime_ns for p in written[2:]}
    logs = []
    resumed = prepare(PrepConfig(fasta=hg38_subset, out=out, progress=False, **kw), log=logs.append)
    assert resumed["splits"] == clean["splits"]
    assert any("(3 kept from an earlier run)" in line for line in logs), logs
    assert any("does not match its record" in line for line in logs), logs
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert not (out / ".partial").exists()


def test_different_preparation_in_the_same_folder_needs_overwrite(hg38_subset, tmp_path):
    out = tmp_path / "s"
    _prep(hg38_subset, out, valid_chroms=["chr20"], chunk_len=100_000)
    with pytest.raises(ValueError, match="different preparation.*chunk_len.*--overwrite"):
        _prep(hg38_subset, out, valid_chroms=["chr20"], chunk_len=200_000)
    m = _prep(hg38_subset, out, chunk_len=200_000, overwrite=True)
    assert list(m["splits"]) == ["train"]
    assert not list((out / "valid").glob("shard-*.tar"))


def test_shards_are_webdataset_readable(hg38_subset, tmp_path):
    out = tmp_path / "s"
    _prep(hg38_subset, out, chroms=["chrM", "chr20"], chunk_len=1_000_000)
    urls = [str(out / sh["path"]) for sh in load_manifest(out).shards("train")]
    samples = list(wds.WebDataset(urls, shardshuffle=False, nodesplitter=lambda u: u, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"train-{i:09d}" for i in range(4)]
    assert [json.loads(s["json"])["chrom"] for s in samples] == ["chr20"] * 3 + ["chrM"]  # FASTA order
    assert sum(len(s["seq"]) for s in samples) == 3_000_000 + 16_569
    assert os.path.getsize(out / "manifest.json") > 0

"""Bad input: each is a clear error, and no manifest is written. Damaged shards are named at read time."""

import json

import pytest

from data_prep.cli import main
from data_prep.format import ShardReader, load_manifest
from data_prep.prep import PrepConfig, prepare


def _fasta(tmp_path, text, name="g.fa"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = ">chr1\nACGTACGTAC\nACGTAcgtac\nNNNN\n>chr2\nACGTACGTAC\nAC\n"


def _cli(capsys, *args):
    rc = main(["shards", "--quiet", *map(str, args)])
    return rc, capsys.readouterr().err


def test_non_dna_character_names_record_and_offset(tmp_path, capsys):
    fa = _fasta(tmp_path, ">chr1\nACGTACGTAC\nACGTAC\n>chr2\nACGTACGTAC\nACGTA*GTAC\n")
    out = tmp_path / "out"
    rc, err = _cli(capsys, "--fasta", fa, "--out", out)
    assert rc == 2
    assert "non-DNA character '*'" in err and "record 'chr2' at offset 15" in err
    assert not (out / "manifest.json").exists()


def test_iupac_codes_fail_with_a_hint_or_become_n(tmp_path, capsys):
    fa = _fasta(tmp_path, ">chr1\nACGTRCGTAC\nACGTyC\n")
    rc, err = _cli(capsys, "--fasta", fa, "--out", tmp_path / "a")
    assert rc == 2 and "'R'" in err and "offset 4" in err and "--iupac-to-n" in err
    rc, _ = _cli(capsys, "--fasta", fa, "--out", tmp_path / "b", "--iupac-to-n", "--min-acgt", "0")
    assert rc == 0
    m = load_manifest(tmp_path / "b")
    sample = m.samples("train")[0]
    assert ShardReader(m).read(sample, 0, sample.length) == b"ACGTNCGTACACGTnC"
    assert main(["verify", str(tmp_path / "b"), "--fasta", str(fa)]) == 0


@pytest.mark.parametrize("text, message", [("", "is empty"), ("\n", "no sequence records")])
def test_empty_fasta(tmp_path, capsys, text, message):
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, text), "--out", tmp_path / "out")
    assert rc == 2 and message in err and not (tmp_path / "out" / "manifest.json").exists()


def test_missing_fasta_and_bed(tmp_path, capsys):
    rc, err = _cli(capsys, "--fasta", tmp_path / "nope.fa", "--out", tmp_path / "out")
    assert rc == 2 and "FASTA file not found" in err
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, GOOD), "--out", tmp_path / "out", "--bed", tmp_path / "x.bed")
    assert rc == 2 and "BED file not found" in err
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("bed, message", [
    ("chr1\t0\t20\ttrain\nchr1\t10\t24\tvalid\n", "overlaps between splits"),
    ("chr1\t0\t20\ttrain\nchr2\t0\t13\tvalid\n", "past a chromosome end"),
    ("chr1\t0\t20\ttrain\nchrUn\t0\t5\tvalid\n", "absent from the FASTA"),
])
def test_bad_bed_fails_before_anything_is_written(tmp_path, capsys, bed, message):
    out = tmp_path / "out"
    (tmp_path / "s.bed").write_text(bed)
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, GOOD), "--out", out, "--bed", tmp_path / "s.bed")
    assert rc == 2 and message in err
    assert not out.exists() or not any(out.iterdir())


def test_clip_counts_what_it_removes(tmp_path, capsys):
    (tmp_path / "s.bed").write_text("chr1\t0\t20\ttrain\nchr2\t0\t13\tvalid\nchrUn\t0\t5\tvalid\n")
    rc, _ = _cli(capsys, "--fasta", _fasta(tmp_path, GOOD), "--out", tmp_path / "out", "--bed", tmp_path / "s.bed",
                 "--clip", "--min-acgt", "0")
    assert rc == 0
    m = load_manifest(tmp_path / "out")
    assert m.data["split_definition"]["clip_report"] == {
        "excluded_intervals": 0, "unknown_chrom_intervals": 1, "unknown_chrom_bases": 5,
        "clipped_intervals": 1, "clipped_bases": 1}
    assert m.split("valid")["region_bases"] == 12 and m.split("train")["bases"] == 20


def test_bed_and_chromosome_lists_together_are_refused(tmp_path, capsys):
    (tmp_path / "s.bed").write_text("chr1\t0\t20\ttrain\n")
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, GOOD), "--out", tmp_path / "o", "--bed", tmp_path / "s.bed",
                   "--valid-chroms", "chr2")
    assert rc == 2 and "either --bed or --valid-chroms" in err


EMPTY_CHROM = ">chr1\nACGTACGTAC\nACGTAcgtac\n>chrA\n>chrN\nNNNNNNNNNN\nNN\n>chr2\nACGTACGTAC\nAC\n"


@pytest.mark.parametrize("args, message", [
    (["--valid-chroms", "chrA"], "split 'valid' would be empty: --valid-chroms chrA: chrA has 0 bases"),
    (["--valid-chroms", "chr2", "--test-chroms", "chrA"], "split 'test' would be empty: --test-chroms chrA"),
    (["--valid-chroms", "chr1,chr2,chrN,chrA"], "split 'train' would be empty: every chromosome kept"),
    (["--valid-chroms", "chrN"], "split 'valid' would be empty: all 1 chunks (12 bases) have less than --min-acgt"),
])
def test_a_split_that_ends_up_empty_is_an_error_and_nothing_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, EMPTY_CHROM), "--out", out, *args)
    assert rc == 2 and message in err and "Nothing was written" in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("bed, extra, message", [
    ("chr1\t0\t20\ttrain\nchr2\t0\t12\tvalid\n", ["--chroms", "chr1"],
     "split 'valid' would be empty: all 1 of its BED intervals"),
    ("chr1\t0\t20\ttrain\nchr2\t12\t30\tvalid\nchrUn\t0\t5\tvalid\n", ["--clip"],
     "1 on chromosomes absent from the FASTA (dropped by --clip); 1 past the chromosome end"),
    ("chr1\t0\t20\ttrain\nchrN\t0\t12\tvalid\n", [], "split 'valid' would be empty: all 1 chunks"),
])
def test_a_bed_split_that_ends_up_empty_is_an_error(tmp_path, capsys, bed, extra, message):
    out = tmp_path / "out"
    (tmp_path / "s.bed").write_text(bed)
    rc, err = _cli(capsys, "--fasta", _fasta(tmp_path, EMPTY_CHROM), "--out", out, "--bed", tmp_path / "s.bed",
                   *extra)
    assert rc == 2 and message in err, err
    assert not out.exists() or not any(out.iterdir())


def test_an_n_only_split_is_kept_when_min_acgt_allows_it(tmp_path, capsys):
    rc, _ = _cli(capsys, "--fasta", _fasta(tmp_path, EMPTY_CHROM), "--out", tmp_path / "out",
                 "--valid-chroms", "chrN", "--min-acgt", "0")
    assert rc == 0 and load_manifest(tmp_path / "out").split("valid")["samples"] == 1


@pytest.fixture()
def prepared(tmp_path):
    fa = _fasta(tmp_path, ">chr1\n" + "ACGTACGTAC\n" * 30 + ">chr2\n" + "acgtnACGTN\n" * 30)
    out = tmp_path / "out"
    prepare(PrepConfig(fasta=fa, out=out, chunk_len=50, valid_chroms=["chr2"], progress=False), log=lambda *_: None)
    return out


def test_truncated_shard_is_named_at_read_time(prepared):
    m = load_manifest(prepared)
    shard = prepared / m.shards("train")[0]["path"]
    shard.write_bytes(shard.read_bytes()[:3000])
    sample = m.samples("train")[0]
    with pytest.raises(ValueError, match=f"shard {shard} is truncated"):
        ShardReader(m).read(sample, 0, 10)


def test_corrupted_shard_is_named_at_read_time(prepared):
    m = load_manifest(prepared)
    samples = m.samples("train")
    shard = prepared / samples[0].shard
    data = bytearray(shard.read_bytes())
    data[samples[1].offset - 512:samples[1].offset - 500] = b"garbage-name"  # a tar header
    data[samples[2].offset + 7] = 0xFF  # a sequence byte
    shard.write_bytes(bytes(data))
    reader = ShardReader(m)
    assert reader.read(samples[0], 0, 50) == b"ACGTACGTAC" * 5
    with pytest.raises(ValueError, match=f"shard {shard} is corrupted: expected member {samples[1].key}.seq"):
        reader.read(samples[1], 0, 10)
    with pytest.raises(ValueError, match=f"shard {shard} is corrupted: sample {samples[2].key} bytes"):
        reader.read(samples[2], 0, 10)
    assert main(["verify", str(prepared)]) == 1


def test_manifest_of_unknown_version_is_refused(prepared):
    path = prepared / "manifest.json"
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99.*knows version 1 only"):
        load_manifest(prepared)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_manifest(prepared)
    with pytest.raises(ValueError, match="no manifest.json"):
        load_manifest(prepared / "train")


def test_a_stale_index_is_reported_as_such(tmp_path, capsys):
    fa = _fasta(tmp_path, ">chr1\n" + "ACGTACGTAC\n" * 8 + ">chr2\n" + "ACGTACGTAC\n" * 8)
    assert _cli(capsys, "--fasta", fa, "--out", tmp_path / "a", "--min-acgt", "0")[0] == 0  # writes g.fa.fai
    fa.write_text(">chr1\n" + "ACGTA\n" * 16 + ">chr2\n" + "ACGTA\n" * 16)  # re-wrapped, index left behind
    rc, err = _cli(capsys, "--fasta", fa, "--out", tmp_path / "b")
    assert rc == 2 and "stale" in err and "delete it to rebuild" in err


def test_malformed_manifest_is_a_clear_error(prepared):
    path = prepared / "manifest.json"
    data = json.loads(path.read_text())
    del data["splits"]["train"]["shards"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="is malformed .*re-prepare"):
        load_manifest(prepared)

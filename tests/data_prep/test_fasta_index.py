"""FASTA index building and random access, plain and BGZF, against samtools' .fai files and pyfaidx."""

import gzip

import numpy as np
import pyfaidx
import pytest

from data_prep.fasta import FastaReader, build_fai, load_index, read_fai


@pytest.mark.parametrize("name", ["hg38_subset.fa", "chr20_1-3000000.hg38.fa", "chr2_1-2333275.hg38.fa.gz"])
def test_built_index_equals_samtools_fai(sample_data, name):
    path = sample_data / "hg38" / name
    assert build_fai(path) == read_fai(path.with_name(name + ".fai"))


def test_random_ranges_match_pyfaidx(hg38_subset):
    reader = FastaReader(hg38_subset)
    ref = pyfaidx.Fasta(str(hg38_subset), as_raw=True)
    rng = np.random.default_rng(0)
    for _ in range(300):
        name = ["chr2", "chr20", "chrM"][rng.integers(3)]
        n = len(ref[name])
        start = int(rng.integers(0, n))
        end = int(min(n, start + rng.integers(0, 200_000)))
        assert reader.fetch(name, start, end) == ref[name][start:end].encode()


def test_bgzf_reads_equal_the_plain_file(sample_data, hg38_subset):
    gz = FastaReader(sample_data / "hg38" / "chr2_1-2333275.hg38.fa.gz")
    plain = FastaReader(hg38_subset)
    assert gz.compression == "bgzf"
    rng = np.random.default_rng(1)
    for _ in range(100):  # ranges crossing 64 KiB block boundaries included
        start = int(rng.integers(0, 2_333_275))
        end = int(min(2_333_275, start + rng.integers(0, 300_000)))
        assert gz.fetch("chr2", start, end) == plain.fetch("chr2", start, end)
    assert gz.fetch("chr2", 2_333_270, 2_333_275) == plain.fetch("chr2", 2_333_270, 2_333_275)


def test_crlf_short_last_lines_and_no_final_newline(tmp_path):
    fa = tmp_path / "x.fa"
    fa.write_bytes(b">a desc\r\nACGT\r\nacg\r\n>b\nNNNNN\nAC\n>c\nACGTA\nACGTA\nAA")
    entries, note = load_index(fa)
    assert [(e.name, e.length, e.linebases, e.linewidth) for e in entries] == [
        ("a", 7, 4, 6), ("b", 7, 5, 6), ("c", 12, 5, 6)]
    assert "built index" in note and (tmp_path / "x.fa.fai").is_file()
    reader = FastaReader(fa)
    assert reader.fetch("a", 0, 7) == b"ACGTacg"
    assert reader.fetch("a", 3, 5) == b"Ta"
    assert reader.fetch("b", 4, 7) == b"NAC"
    assert reader.fetch("c", 0, 12) == b"ACGTAACGTAAA"


def test_fetch_outside_a_record_is_an_error(tmp_path):
    fa = tmp_path / "x.fa"
    fa.write_text(">a\nACGT\n")
    reader = FastaReader(fa)
    with pytest.raises(ValueError, match="outside a"):
        reader.fetch("a", 2, 5)
    with pytest.raises(ValueError, match="'zz' is not in"):
        reader.fetch("zz", 0, 1)


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n\n", "no sequence records"),
    (b"ACGT\n>a\nAC\n", "sequence before the first '>'"),
    (b">a\nACGT\nAC\nACGT\n", "short or blank line before its last line"),
    (b">a\nACG\nACGT\n", "unequal length"),
    (b">a\nAC\n>a\nAC\n", "duplicate record name"),
    (b">\nAC\n", "header without a name"),
])
def test_malformed_fasta_is_a_clear_error(tmp_path, content, message):
    fa = tmp_path / "bad.fa"
    fa.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_index(fa)


def test_missing_file_and_plain_gzip_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_index(tmp_path / "nope.fa")
    gz = tmp_path / "plain.fa.gz"
    gz.write_bytes(gzip.compress(b">a\nACGT\n"))
    with pytest.raises(ValueError, match="not BGZF.*gunzip"):
        load_index(gz)

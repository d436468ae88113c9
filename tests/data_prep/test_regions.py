"""Split definitions: BED semantics (merge, overlap across splits, out of range, --clip), chromosome lists."""

import pytest

from data_prep.regions import (plan_chunks, plan_shards, read_bed, regions_from_bed, regions_from_chroms)

SIZES = {"chr1": 1000, "chr2": 500, "chrX": 300}


def _bed(tmp_path, text):
    path = tmp_path / "s.bed"
    path.write_text(text)
    return read_bed(path)


def _spans(regions):
    return {s: [(r.chrom, r.start, r.end) for r in rs] for s, rs in regions.items()}


def test_overlaps_within_a_split_are_merged_and_genome_ordered(tmp_path):
    ivs = _bed(tmp_path, "# comment\ntrack name=x\nchr2\t0\t100\ttrain\nchr1\t50\t150\ttrain\n"
                         "chr1\t100\t300\ttrain\nchr1\t300\t400\ttrain\nchr1\t600\t700\tvalid\n")
    regions, report = regions_from_bed(ivs, SIZES)
    assert _spans(regions) == {"train": [("chr1", 50, 400), ("chr2", 0, 100)], "valid": [("chr1", 600, 700)]}
    assert regions["train"][0].lines == [4, 5, 6]
    assert not any(report.values())


def test_a_base_in_two_splits_is_an_error_listing_the_intervals(tmp_path):
    ivs = _bed(tmp_path, "chr1\t0\t100\ttrain\nchr1\t90\t200\tvalid\nchr2\t0\t10\ttest\nchr2\t5\t6\ttrain\n")
    with pytest.raises(ValueError) as err:
        regions_from_bed(ivs, SIZES)
    text = str(err.value)
    assert "2 overlaps between splits" in text
    assert "chr1:0-100 (train, BED line 1) overlaps chr1:90-200 (valid, BED line 2)" in text
    assert "chr2:0-10 (test, BED line 3) overlaps chr2:5-6 (train, BED line 4)" in text


def test_adjacent_intervals_of_different_splits_are_fine(tmp_path):
    regions, _ = regions_from_bed(_bed(tmp_path, "chr1\t0\t100\ttrain\nchr1\t100\t200\tvalid\n"), SIZES)
    assert _spans(regions) == {"train": [("chr1", 0, 100)], "valid": [("chr1", 100, 200)]}


def test_out_of_range_and_unknown_chromosomes_fail_or_are_clipped_and_counted(tmp_path):
    ivs = _bed(tmp_path, "chr1\t900\t1100\ttrain\nchr2\t600\t700\ttrain\nchr9\t0\t50\tvalid\nchr1\t0\t10\tvalid\n")
    with pytest.raises(ValueError) as err:
        regions_from_bed(ivs, SIZES)
    text = str(err.value)
    assert "1 BED intervals on chromosomes absent from the FASTA" in text and "chr9:0-50 valid (BED line 3)" in text
    assert "2 BED intervals past a chromosome end" in text and "chr1:900-1100 train (BED line 1) > chr1 length 1000" in text
    assert "--clip" in text
    regions, report = regions_from_bed(ivs, SIZES, clip=True)
    assert _spans(regions) == {"train": [("chr1", 900, 1000)], "valid": [("chr1", 0, 10)]}
    assert report == {"excluded_intervals": 0, "unknown_chrom_intervals": 1, "unknown_chrom_bases": 50,
                      "clipped_intervals": 2, "clipped_bases": 200}


def test_chroms_restricts_bed_intervals(tmp_path):
    ivs = _bed(tmp_path, "chr1\t0\t10\ttrain\nchr2\t0\t10\tvalid\nchr9\t0\t10\ttest\n")
    regions, report = regions_from_bed(ivs, SIZES, chroms=["chr1"])
    assert _spans(regions) == {"train": [("chr1", 0, 10)]}
    assert report["excluded_intervals"] == 2
    with pytest.raises(ValueError, match="chromosomes not in the FASTA: chr7"):
        regions_from_bed(ivs, SIZES, chroms=["chr7"])


@pytest.mark.parametrize("line, message", [
    ("chr1\t0\t10", "expected chrom, start, end, split"),
    ("chr1\tx\t10\ttrain", "must be integers"),
    ("chr1\t10\t10\ttrain", "0 <= start < end"),
    ("chr1\t0\t10\ttr-ain", "letters, digits or '_'"),
])
def test_malformed_bed_lines_name_the_line(tmp_path, line, message):
    with pytest.raises(ValueError, match=message) as err:
        _bed(tmp_path, "chr1\t0\t5\ttrain\n" + line + "\n")
    assert "s.bed:2" in str(err.value)


def test_chromosome_lists(tmp_path):
    regions = regions_from_chroms(SIZES, valid=["chr2"], test=["chrX"])
    assert _spans(regions) == {"train": [("chr1", 0, 1000)], "valid": [("chr2", 0, 500)], "test": [("chrX", 0, 300)]}
    assert _spans(regions_from_chroms(SIZES, chroms=["chrX", "chr1"])) == {"train": [("chr1", 0, 1000), ("chrX", 0, 300)]}
    with pytest.raises(ValueError, match="both --valid-chroms and --test-chroms: chr2"):
        regions_from_chroms(SIZES, valid=["chr2"], test=["chr2"])
    with pytest.raises(ValueError, match="not in the FASTA: chr3"):
        regions_from_chroms(SIZES, valid=["chr3"])
    with pytest.raises(ValueError, match="left out by --chroms: chr2"):
        regions_from_chroms(SIZES, valid=["chr2"], chroms=["chr1"])


def test_chunks_tile_regions_and_shards_group_them():
    regions = regions_from_chroms(SIZES)
    chunks = plan_chunks(regions, 300)["train"]
    assert [(c.chrom, c.start, c.end) for c in chunks] == [
        ("chr1", 0, 300), ("chr1", 300, 600), ("chr1", 600, 900), ("chr1", 900, 1000),
        ("chr2", 0, 300), ("chr2", 300, 500), ("chrX", 0, 300)]
    assert [c.key for c in chunks][:2] == ["train-000000000", "train-000000001"]
    shards = plan_shards(chunks, 700)
    assert [[c.index for c in s] for s in shards] == [[0, 1], [2, 3, 4], [5, 6]]
    assert [[c.index for c in s] for s in plan_shards(chunks, 1)] == [[i] for i in range(7)]
    with pytest.raises(ValueError, match="chunk_len must be >= 2"):
        plan_chunks(regions, 1)


def test_real_basenji_bed_on_hg38_chromosome_sizes(sample_data):
    """The Akita/Basenji split file defines three disjoint splits on the real hg38 chromosome sizes."""
    sizes = dict(line.split() for line in (sample_data / "splits" / "human.hg38.genome").read_text().splitlines())
    sizes = {k: int(v) for k, v in sizes.items()}
    ivs = read_bed(sample_data / "splits" / "akita_sequences.hg38.bed")
    regions, report = regions_from_bed(ivs, sizes)
    assert sorted(regions) == ["test", "train", "valid"]
    assert not any(report.values())
    per_split = {s: sum(r.end - r.start for r in rs) for s, rs in regions.items()}
    raw = {s: sum(iv.end - iv.start for iv in ivs if iv.split == s) for s in regions}
    assert all(per_split[s] <= raw[s] for s in regions)  # merging never adds bases
    assert per_split["train"] > 2e9 and per_split["valid"] > 2e8

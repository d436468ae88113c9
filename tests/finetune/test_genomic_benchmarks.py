"""GenomicBenchmarks readers on the real sample data: interval lists resolve to the published sequences."""

from __future__ import annotations

import gzip

import pytest

from finetune.genomic_benchmarks import (intervals_inside, read_interval_dataset, read_interval_list,
                                         read_sequence_file)

TASKS = ("human_nontata_promoters", "human_enhancers_cohn")


def test_the_30_intervals_inside_the_sample_genome_resolve_to_the_published_sequences(sample_data):
    fasta = sample_data / "hg38" / "hg38_subset.fa.gz"  # bgzipped, read with random access
    total, minus = 0, 0
    for task in TASKS:
        folder = sample_data / "genomic_benchmarks" / "intervals" / task
        got = read_interval_dataset(folder, "test", fasta, inside_only=True)
        published = read_sequence_file(sample_data / "genomic_benchmarks" / "sequences" / f"{task}.test.tsv")
        label_of = dict(zip(published.seqs, published.labels))
        assert got.class_names == ["negative", "positive"]
        for seq, label in zip(got.seqs, got.labels):
            assert label_of.get(seq) == label, f"{task}: a resolved interval is not a published sequence of its class"
        total += len(got)
        inside = [iv for name in got.class_names
                  for iv in intervals_inside(read_interval_list(folder / "test" / f"{name}.csv.gz"), fasta)]
        minus += sum(iv.strand == "-" for iv in inside)
    assert total == 30
    assert 0 < minus < 30  # both strands exercised: '-' intervals only match after the reverse complement


def test_plain_and_gzip_sequence_files_read_alike(sample_data):
    path = sample_data / "genomic_benchmarks" / "sequences" / "human_nontata_promoters.test.tsv"
    plain, packed = read_sequence_file(path), read_sequence_file(path.with_name(path.name + ".gz"))
    assert plain.seqs == packed.seqs and plain.labels == packed.labels
    assert len(plain) == 9034 and sorted(set(plain.labels)) == [0, 1]


@pytest.mark.parametrize("content, message", [
    ("seq\tlabel\nACGT\t1\nACGT\n", "label is missing"),
    ("ACGT\t1\nACGT\tpositive\n", "not a non-negative integer"),
    ("ACGT\t1\nACGT\t-1\n", "not a non-negative integer"),
    ("seq\tlabel\n", "empty split"),
])
def test_bad_sequence_files_are_refused_naming_the_line(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_sequence_file(path)


def test_unreadable_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        read_sequence_file(tmp_path / "missing.tsv")
    broken = tmp_path / "broken.tsv.gz"
    broken.write_bytes(gzip.compress(b"ACGT\t1\n" * 1000)[:40])
    with pytest.raises(ValueError, match="cannot read"):
        read_sequence_file(broken)
    csv = tmp_path / "x.csv"
    csv.write_text("name,chrom,start,end\n")
    with pytest.raises(ValueError, match="id,region,start,end,strand"):
        read_interval_list(csv)

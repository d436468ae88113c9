"""``python -m data_prep species`` on real genomes: per-species shards with prep's guarantees, task.json, and a clear
error with nothing written for each kind of bad input."""

import gzip
import json

import pytest

from data_prep.cli import main
from data_prep.fasta import load_index
from data_prep.format import load_manifest
from data_prep.report import verify
from data_prep.species import load_task

ECOLI = "species/nuclear/ecoli_K12_MG1655_NC_000913.3.fna.gz"
WORM = "species/nuclear/caenorhabditis_elegans_WS282_1pct.fa.gz"
CHIMP_NUC = "species/nuclear/chimp_panTro6_chr1_111982700-112009400.fa.gz"
HUMAN_MT = "species/mito/human_Homo_sapiens_NC_012920.1.fa.gz"
CHIMP_MT = "species/mito/chimp_Pan_troglodytes_NC_001643.1.fa.gz"


def _run(capsys, *args):
    rc = main(["species", "--quiet", *map(str, args)])
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def task(sample_data, tmp_path_factory):
    """Human (whole records as splits) + E. coli and C. elegans (holdout fraction), small chunks."""
    out = tmp_path_factory.mktemp("species") / "task"
    rc = main(["species", "--quiet", "--genome", f"human={sample_data / 'hg38/hg38_subset.fa.gz'}",
               "--genome", f"ecoli={sample_data / ECOLI}", "--genome", f"worm={sample_data / WORM}",
               "--valid-chroms", "human=chrM", "--test-chroms", "human=chr20", "--holdout-fraction", "0.1",
               "--chunk-len", "262145", "--out", str(out)])
    assert rc == 0
    return out


def test_task_manifest_labels_splits_and_command(task):
    t = load_task(task)
    assert t["classes"] == ["human", "ecoli", "worm"]
    assert [(s["name"], s["label"], s["shards"]) for s in t["species"]] == [
        ("human", 0, "human"), ("ecoli", 1, "ecoli"), ("worm", 2, "worm")]
    assert t["splits"] == ["train", "valid", "test"]
    assert t["command"][:4] == ["python", "-m", "data_prep", "species"] and "--holdout-fraction" in t["command"]
    human = t["species"][0]
    assert human["split_definition"] == {"mode": "chroms", "valid": ["chrM"], "test": ["chr20"]}
    assert human["splits"]["test"]["region_bases"] == 3_000_000 and human["splits"]["valid"]["region_bases"] == 16_569
    assert t["species"][1]["split_definition"]["mode"] == "holdout_fraction"


def test_holdout_takes_the_last_part_of_every_record(task, sample_data):
    for name, path in (("ecoli", ECOLI), ("worm", WORM)):
        regions = load_manifest(task / name).data["regions"]
        entries, _ = load_index(sample_data / path)
        assert len(entries) >= 1
        for e in entries:
            h = int(e.length * 0.1)
            assert [e.name, 0, e.length - 2 * h] in regions["train"]
            assert [e.name, e.length - 2 * h, e.length - h] in regions["valid"]
            assert [e.name, e.length - h, e.length] in regions["test"]
    assert len(load_manifest(task / "worm").data["regions"]["test"]) == 7  # one stretch per record (I-V, X, MtDNA)


def test_species_shards_pass_data_prep_verify_against_their_fasta(task, sample_data):
    for name, path in (("human", "hg38/hg38_subset.fa.gz"), ("ecoli", ECOLI), ("worm", WORM)):
        assert verify(task / name, sample_data / path, log=lambda *_: None) == []


def test_rerun_is_idempotent(task, sample_data, capsys):
    before = (task / "task.json").read_text()
    stamp = (task / "ecoli" / "manifest.json").stat().st_mtime_ns
    rc = main(["species", "--quiet", "--genome", f"human={sample_data / 'hg38/hg38_subset.fa.gz'}",
               "--genome", f"ecoli={sample_data / ECOLI}", "--genome", f"worm={sample_data / WORM}",
               "--valid-chroms", "human=chrM", "--test-chroms", "human=chr20", "--holdout-fraction", "0.1",
               "--chunk-len", "262145", "--out", str(task)])
    assert rc == 0 and capsys.readouterr().err.count("present and verified") == 3
    assert (task / "ecoli" / "manifest.json").stat().st_mtime_ns == stamp
    assert json.loads((task / "task.json").read_text())["species"] == json.loads(before)["species"]


def test_a_different_preparation_in_the_same_folder_is_refused_before_any_write(task, sample_data, capsys):
    before = {p: p.stat().st_mtime_ns for p in task.rglob("*") if p.is_file()}
    rc, err = _run(capsys, "--genome", f"human={sample_data / 'hg38/hg38_subset.fa.gz'}",
                   "--genome", f"ecoli={sample_data / ECOLI}", "--genome", f"worm={sample_data / WORM}",
                   "--valid-chroms", "human=chrM", "--test-chroms", "human=chr20", "--holdout-fraction", "0.2",
                   "--chunk-len", "262145", "--out", task)
    assert rc == 2 and "species 'ecoli'" in err and "holds shards of a different preparation" in err
    assert "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in task.rglob("*") if p.is_file()} == before


def _mito(sample_data, **extra):
    args = ["--genome", f"human={sample_data / HUMAN_MT}", "--genome", f"chimp={sample_data / CHIMP_MT}",
            "--holdout-fraction", "0.1"]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", v]
    return args


@pytest.mark.parametrize("bad, expected", [
    (["--genome", "human"], "malformed: write NAME=FASTA"),
    (["--genome", "=x.fa"], "malformed"),
    (["--genome", "9human=x.fa"], "must start with a letter"),
])
def test_malformed_genome_spec(bad, expected, sample_data, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, *bad, "--genome", f"chimp={sample_data / CHIMP_MT}", "--holdout-fraction", "0.1",
                   "--out", out)
    assert rc == 2 and expected in err
    assert not out.exists()


def test_species_given_twice(sample_data, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, *_mito(sample_data), "--genome", f"human={sample_data / ECOLI}", "--out", out)
    assert rc == 2 and "species given twice: human" in err
    assert not out.exists()


def test_unknown_and_unreadable_genome_files(sample_data, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, *_mito(sample_data), "--genome", f"ghost={tmp_path / 'missing.fa'}", "--out", out)
    assert rc == 2 and f"--genome ghost={tmp_path / 'missing.fa'}: no such file" in err
    rc, err = _run(capsys, *_mito(sample_data), "--genome", f"folder={tmp_path}", "--out", out)
    assert rc == 2 and "not a regular file" in err
    plain_gz = tmp_path / "chimp.fa.gz"
    plain_gz.write_bytes(gzip.compress((sample_data / CHIMP_MT.removesuffix(".gz")).read_bytes()))
    rc, err = _run(capsys, "--genome", f"human={sample_data / HUMAN_MT}", "--genome", f"chimp={plain_gz}",
                   "--holdout-fraction", "0.1", "--out", out)
    assert rc == 2 and "species 'chimp'" in err and "not BGZF" in err and "bgzip" in err
    garbage = tmp_path / "notes.fa"
    garbage.write_text("this is not a FASTA file\n")
    rc, err = _run(capsys, *_mito(sample_data), "--genome", f"notes={garbage}", "--out", out)
    assert rc == 2 and "species 'notes'" in err
    assert not out.exists()


def test_empty_splits_are_refused_before_writing(sample_data, tmp_path, capsys):
    out = tmp_path / "out"
    # The chimp nuclear sample is one record: naming it valid leaves chimp no train data.
    rc, err = _run(capsys, "--genome", f"human={sample_data / HUMAN_MT}", "--genome",
                   f"chimp={sample_data / CHIMP_NUC}", "--valid-chroms", "chimp=chr1:111982700-112009400",
                   "--holdout-fraction", "0.1", "--out", out)
    assert rc == 2 and "species 'chimp'" in err and "split 'train' would be empty" in err
    # A species with chromosome lists but no test split, while the other species has one.
    rc, err = _run(capsys, "--genome", f"human={sample_data / 'hg38/hg38_subset.fa.gz'}", "--genome",
                   f"chimp={sample_data / CHIMP_MT}", "--valid-chroms", "human=chrM", "--holdout-fraction", "0.1",
                   "--out", out)
    assert rc == 2 and "species 'human' has no test split" in err
    # A holdout too small to hold a base.
    tiny = tmp_path / "tiny.fa"
    tiny.write_text(">tiny\nACGTACGT\n")  # 10% of 8 bases is no base
    rc, err = _run(capsys, "--genome", f"tiny={tiny}", "--genome", f"chimp={sample_data / CHIMP_MT}",
                   "--holdout-fraction", "0.1", "--out", out)
    assert rc == 2 and "species 'tiny'" in err and "no valid or test split" in err
    assert not out.exists()


def test_bad_bytes_found_while_writing_leave_no_folder(sample_data, tmp_path, capsys):
    # The second genome's ambiguity code sits in its third train chunk: planning reads a split's chunks only until
    # one passes --min-acgt, so it is met while writing, after the first species' shards exist.
    bad = tmp_path / "bad.fa"
    bad.write_text(">bad\n" + "ACGT" * 40 + "Y" + "ACGT" * 60 + "\n")
    out = tmp_path / "out"
    rc, err = _run(capsys, "--genome", f"human={sample_data / HUMAN_MT}", "--genome", f"bad={bad}",
                   "--holdout-fraction", "0.1", "--chunk-len", "65", "--out", out)
    assert rc == 2 and "non-DNA character 'Y'" in err and "--iupac-to-n" in err
    assert not out.exists()
    # An existing folder (a run to resume) is left in place.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, _ = _run(capsys, "--genome", f"human={sample_data / HUMAN_MT}", "--genome", f"bad={bad}",
                 "--holdout-fraction", "0.1", "--chunk-len", "65", "--out", out)
    assert rc == 2 and (out / "keep.txt").is_file() and (out / "human").is_dir()


def test_option_mistakes(sample_data, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run(capsys, *_mito(sample_data), "--valid-chroms", "gorilla=chrM", "--out", out)
    assert rc == 2 and "--valid-chroms names species without a --genome: gorilla" in err
    rc, err = _run(capsys, *_mito(sample_data), "--test-chroms", "chrM", "--out", out)
    assert rc == 2 and "--test-chroms item 'chrM' is malformed" in err
    rc, err = _run(capsys, "--genome", f"human={sample_data / HUMAN_MT}", "--holdout-fraction", "0.1", "--out", out)
    assert rc == 2 and "at least two --genome" in err
    rc, err = _run(capsys, *_mito(sample_data)[:4], "--holdout-fraction", "0.5", "--out", out)
    assert rc == 2 and "--holdout-fraction must lie in (0, 0.5)" in err
    rc, err = _run(capsys, *_mito(sample_data)[:4], "--valid-chroms", "human=chr1", "--holdout-fraction", "0.1",
                   "--out", out)
    assert rc == 2 and "species 'human'" in err and "chromosomes not in the FASTA: chr1" in err
    assert not out.exists()

"""``inspect`` reports the manifest's counts; ``verify`` passes on good shards and catches every kind of damage."""

import json
import subprocess
import sys

import pytest

from data_prep.cli import main
from data_prep.prep import PrepConfig, prepare




@pytest.fixture(scope="module")
def shards(hg38_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "shards"
    prepare(PrepConfig(fasta=hg38_subset, out=out, valid_chroms=["chr20"], test_chroms=["chrM"], chunk_len=200_000,
                       progress=False), log=lambda *_: None)
    return out


def test_inspect_reports_per_split_counts(shards, capsys):
    assert main(["inspect", str(shards), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["bases"] == 2_333_275 and summary["train"]["dropped_bases"] == 0
    assert summary["train"]["n_fraction"] == pytest.approx(10_000 / 2_333_275, abs=1e-6)
    assert 0.3 < summary["train"]["soft_masked_fraction"] < 0.4  # UCSC soft-masked chr2
    assert summary["valid"]["dropped_chunks"] == 0 and summary["valid"]["n_fraction"] == pytest.approx(60_725 / 3e6, abs=1e-6)
    assert summary["test"] == {"shards": 1, "samples": 1, "bases": 16_569, "n_fraction": pytest.approx(1 / 16_569, abs=1e-6),
                               "soft_masked_fraction": 0.0, "dropped_chunks": 0, "dropped_bases": 0,
                               "regions": 1, "region_bases": 16_569}
    assert main(["inspect", str(shards)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "2,333,275" in text and "soft-mask" in text


def test_verify_against_the_fasta(shards, hg38_subset, capsys):
    assert main(["verify", str(shards), "--fasta", str(hg38_subset)]) == 0
    assert "all shards OK" in capsys.readouterr().out


def test_verify_with_another_fasta_fails(shards, sample_data, capsys):
    assert main(["verify", str(shards), "--fasta", str(sample_data / "hg38" / "chr20_1-3000000.hg38.fa")]) == 1
    assert "not the FASTA these shards were prepared from" in capsys.readouterr().out


def test_verify_catches_a_changed_byte_and_a_missing_shard(shards, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    shard = copy / "train" / "shard-000000.tar"
    data = bytearray(shard.read_bytes())
    data[5000] = ord("A") if data[5000] != ord("A") else ord("C")  # still DNA: only the checksum can tell
    shard.write_bytes(bytes(data))
    (copy / "test" / "shard-000000.tar").unlink()
    assert main(["verify", str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"shard {shard}: size or sha256 differs" in out
    assert "test/shard-000000.tar is missing" in out and "2 problem(s)" in out


def test_module_entry_point_runs(shards):
    result = subprocess.run([sys.executable, "-m", "data_prep", "inspect", str(shards)], capture_output=True, text=True)
    assert result.returncode == 0 and "valid" in result.stdout
    result = subprocess.run([sys.executable, "-m", "data_prep", "inspect", str(shards / "nowhere")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("error: no manifest.json")

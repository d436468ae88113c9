"""SpeciesStream on real genomes: windows are the genome's bases at their coordinates, deterministic, exactly
resumable, leak-free (no held-out base inside a train window), balanced over species, with finite passes that
cover the same windows for any number of ranks."""

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep.cli import main
from data_prep.fasta import FastaReader
from data_prep.format import load_manifest
from finetune.main import resolve
from finetune.species_data import IGNORE_LABEL, SpeciesStream
from models.tokenizer import PAD_ID, encode, reverse_complement

GENOMES = {"human": "species/mito/human_Homo_sapiens_NC_012920.1.fa.gz",
           "chimp": "species/mito/chimp_Pan_troglodytes_NC_001643.1.fa.gz",
           "orangutan": "species/mito/orangutan_Pongo_abelii_NC_002083.1.fa.gz",
           "ecoli": "species/nuclear/ecoli_K12_MG1655_NC_000913.3.fna.gz"}
CHUNK = 1025  # small chunks, so that windows often span two samples of a segment


@pytest.fixture(scope="module")
def task(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("species_stream") / "task"
    args = ["species", "--quiet", "--out", str(out), "--holdout-fraction", "0.1", "--chunk-len", str(CHUNK)]
    for name, path in GENOMES.items():
        args += ["--genome", f"{name}={sample_data / path}"]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def readers(sample_data):
    return {name: FastaReader(sample_data / path) for name, path in GENOMES.items()}


def _regions(task, name, split):
    return [tuple(r) for r in load_manifest(task / name).data["regions"].get(split, [])]


def _windows(stream, batches):
    out = []
    for _, batch in zip(range(batches), stream):
        out += [(w, int(label)) for w, label in zip(batch["windows"], batch["labels"]) if w is not None]
    return out


def _same(a, b):
    return all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in ("input_ids", "labels", "attention_mask"))


def test_batches_are_the_genome_at_their_coordinates(task, readers):
    stream = SpeciesStream(task, "train", 1500, 8, seed=3, rc_prob=0.5, return_windows=True)
    assert stream.num_classes == 4 and stream.class_names == list(GENOMES)
    spanning = rc_seen = 0
    for _, batch in zip(range(12), stream):
        assert batch["input_ids"].shape == (8, 1500) and batch["input_ids"].dtype == torch.int64
        assert batch["labels"].shape == (8,) and batch["attention_mask"].dtype == torch.bool
        assert bool(batch["attention_mask"].all())
        for row, label, (species, chrom, start, end, rc) in zip(batch["input_ids"], batch["labels"], batch["windows"]):
            assert stream.class_names[int(label)] == species
            bases = readers[species].fetch(chrom, start, end)
            expected = encode(reverse_complement(bases) if rc else bases)
            assert np.array_equal(row.numpy(), expected)
            spanning += start // CHUNK != (end - 1) // CHUNK
            rc_seen += rc
    assert spanning > 20 and 20 < rc_seen < 76  # windows cross chunk boundaries; about half are minus strand


def test_deterministic_per_seed(task):
    a = list(zip(range(5), SpeciesStream(task, "train", 512, 4, seed=7, rc_prob=0.5)))
    b = list(zip(range(5), SpeciesStream(task, "train", 512, 4, seed=7, rc_prob=0.5)))
    c = list(zip(range(5), SpeciesStream(task, "train", 512, 4, seed=8, rc_prob=0.5)))
    assert _same([x for _, x in a], [x for _, x in b])
    assert not _same([x for _, x in a], [x for _, x in c])


def test_train_windows_never_touch_held_out_bases(task):
    stream = SpeciesStream(task, "train", 1200, 32, seed=1, return_windows=True)
    held_out = {name: _regions(task, name, "valid") + _regions(task, name, "test") for name in GENOMES}
    train = {name: _regions(task, name, "train") for name in GENOMES}
    near_boundary = 0
    for (species, chrom, start, end, _), _ in _windows(stream, 60):
        assert not any(c == chrom and start < e and s < end for c, s, e in held_out[species])
        assert any(c == chrom and s <= start and end <= e for c, s, e in train[species])
        near_boundary += any(c == chrom and e - end < 2000 for c, s, e in train[species])
    assert near_boundary > 0  # windows do reach the end of the train region, right before the held-out part
    test = SpeciesStream(task, "test", 1200, 16, epochs=1, return_windows=True)
    for (species, chrom, start, end, _), _ in _windows(test, len(test)):
        assert any(c == chrom and s <= start and end <= e for c, s, e in _regions(task, species, "test"))


def test_species_are_sampled_uniformly(task):
    # E. coli has 280x the bases of a mitochondrion, yet every species is drawn equally often.
    stream = SpeciesStream(task, "train", 256, 64, seed=0)
    counts = Counter()
    for _, batch in zip(range(25), stream):
        counts.update(batch["labels"].tolist())
    assert sorted(counts) == [0, 1, 2, 3]
    assert all(abs(n - 400) < 80 for n in counts.values()), counts  # 1600 draws, sd ~17


def test_resume_is_exact_across_epochs(task):
    full = SpeciesStream(task, "train", 700, 4, seed=5, rc_prob=0.3, batches_per_epoch=3)
    reference = [b for _, b in zip(range(8), full)]
    first = SpeciesStream(task, "train", 700, 4, seed=5, rc_prob=0.3, batches_per_epoch=3)
    _ = [b for _, b in zip(range(4), first)]
    state = first.state_dict()
    assert state["epoch"] == 1 and state["batch"] == 1
    resumed = SpeciesStream(task, "train", 700, 4, seed=5, rc_prob=0.3, batches_per_epoch=3)
    resumed.load_state_dict(state)
    assert _same(reference[4:], [b for _, b in zip(range(4), resumed)])
    assert not _same(reference[:3], reference[3:6])  # epochs differ
    other = SpeciesStream(task, "train", 700, 4, seed=6, rc_prob=0.3, batches_per_epoch=3)
    with pytest.raises(ValueError, match="seed=5 but this stream has 6"):
        other.load_state_dict(state)


def test_finite_pass_is_the_same_windows_for_any_number_of_ranks(task):
    def union(dp_size):
        rows = []
        for rank in range(dp_size):
            stream = SpeciesStream(task, "valid", 900, 3, epochs=1, batches_per_epoch=7, dp_rank=rank,
                                   dp_size=dp_size, return_windows=True)
            batches = list(stream)
            assert len(batches) == len(stream) == -(-21 // (3 * dp_size))
            for batch in batches:
                for j, window in enumerate(batch["windows"]):
                    if window is None:  # filler row: ignored by the loss and by accuracy
                        assert batch["labels"][j] == IGNORE_LABEL and not batch["attention_mask"][j].any()
                        assert bool((batch["input_ids"][j] == PAD_ID).all())
                    else:
                        rows.append((window, int(batch["labels"][j]), batch["input_ids"][j].sum().item()))
        return sorted(rows)

    one = union(1)
    assert len(one) == 21
    assert union(2) == one and union(4) == one
    again = SpeciesStream(task, "valid", 900, 3, epochs=1, batches_per_epoch=7, return_windows=True)
    assert sorted(_windows(again, 7)) == sorted((w, label) for w, label, _ in one)  # a second pass is identical


def test_default_finite_pass_tiles_the_split(task):
    stream = SpeciesStream(task, "test", 1000, 16, epochs=1)
    tiles = sum(sum(e - s for _, s, e in _regions(task, name, "test")) // 1000 for name in GENOMES)
    assert stream.windows_per_epoch == tiles == 464 + 3  # E. coli 464,165 bases, each mitochondrion 1,6xx


def test_windows_with_too_many_n_are_redrawn_and_counted(sample_data, tmp_path):
    # Real human mtDNA behind a 3 kb gap of N (as assemblies have), against chimp.
    human = (sample_data / GENOMES["human"].removesuffix(".gz")).read_text().splitlines()
    gapped = tmp_path / "gapped.fa"
    gapped.write_text(">chrM_gap\n" + "N" * 3000 + "".join(human[1:]) + "\n")
    out = tmp_path / "task"
    assert main(["species", "--quiet", "--out", str(out), "--genome", f"human={gapped}", "--genome",
                 f"chimp={sample_data / GENOMES['chimp']}", "--holdout-fraction", "0.1", "--chunk-len", "8193"]) == 0
    stream = SpeciesStream(out, "train", 400, 32, seed=2, return_windows=True)
    humans = 0
    for _, batch in zip(range(10), stream):
        for row, window in zip(batch["input_ids"], batch["windows"]):
            assert int((row == 11).sum()) <= 200  # at most max_n_frac = 0.5 of the window is N
            humans += window[0] == "human"
    assert stream.stats()["n_redraws"] > 0 and humans > 100
    strict = SpeciesStream(out, "train", 400, 32, seed=2, max_n_frac=0.0)
    for _, batch in zip(range(3), strict):
        assert int((batch["input_ids"] == 11).sum()) == 0


def test_bad_arguments_are_clear_errors(task):
    with pytest.raises(ValueError, match="species 'human' has no window of 20000 bases in split 'test'"):
        SpeciesStream(task, "test", 20000, 2)
    with pytest.raises(ValueError, match="has no split 'holdout'"):
        SpeciesStream(task, "holdout", 100, 2)
    with pytest.raises(ValueError, match="no task.json"):
        SpeciesStream(task / "human", "train", 100, 2)
    with pytest.raises(ValueError, match="rc_prob"):
        SpeciesStream(task, "train", 100, 2, rc_prob=1.5)


def test_species_task_configs_load_and_match_their_prep_commands():
    """The two papers' species configs resolve through the fine-tuning schema, and the prep command in each
    one's comments writes the task folder the config reads, with one --genome per class."""
    configs = Path(__file__).resolve().parents[2] / "configs" / "finetune"
    expected = {"species_hyenadna.yaml": ["human", "lemur", "mouse", "pig", "hippo"],
                "species_great_apes.yaml": ["human", "chimpanzee", "gorilla", "orangutan", "bonobo"]}
    for name, species in expected.items():
        cfg = resolve(configs / name, [])
        assert cfg.data.format == "species" and cfg.data.seq_len == 1024 and cfg.train.max_steps
        text = (configs / name).read_text()
        assert f"python -m data_prep species --out {cfg.data.task_dir} " in text
        assert re.findall(r"--genome (\w+)=", text) == species

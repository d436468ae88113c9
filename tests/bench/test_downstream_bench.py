"""The bookkeeping of the downstream benchmarks: the seeded GenomicBenchmarks split and the Wilson interval."""

import gzip

import pytest

from bench import genomic_benchmarks as gb


def test_split_partitions_the_embedded_file_by_class_and_is_seeded(tmp_path):
    task = "human_nontata_promoters"
    info = gb.split_task(task, tmp_path / "a", [0.8, 0.1, 0.1], seed=2222)
    source = gzip.decompress((gb.SEQUENCES / f"{task}.test.tsv.gz").read_bytes()).decode().splitlines()
    source = [line for line in source if line != "seq\tlabel"]
    parts = {s: (tmp_path / "a" / task / f"{s}.tsv").read_text().splitlines() for s in ("train", "valid", "test")}
    assert sorted(sum(parts.values(), [])) == sorted(source)  # a partition: every line once
    for c in (0, 1):
        n = sum(line.endswith(f"\t{c}") for line in source)
        got = [info[s]["per_class"][c] for s in ("train", "valid", "test")]
        assert sum(got) == n and abs(got[1] - n / 10) <= 1 and abs(got[2] - n / 10) <= 1
    assert gb.split_task(task, tmp_path / "b", [0.8, 0.1, 0.1], seed=2222) == info
    assert gb.split_task(task, tmp_path / "c", [0.8, 0.1, 0.1], seed=1)["test"]["sha256"] != info["test"]["sha256"]


def test_wilson_interval():
    from finetune.metrics import wilson

    lo, hi = wilson(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_backbone_config_resolves_and_splits_its_batches():
    from pretrain.args import resolve
    from pretrain.schedule import batch_split

    cfg = resolve(gb.REPO / "bench" / "hyena_cpu_8k.yaml", [])
    assert cfg.train.seq_lens() == [1024, 2048, 4096, 8192] and cfg.model.l_max == 8192
    assert (cfg.train.max_steps, cfg.train.schedule_steps()) == (100, 120)
    for dp in (1, 2, 4):
        for seq_len in cfg.train.seq_lens():
            mb, ga = batch_split(tokens_per_step=cfg.train.tokens_per_step, seq_len=seq_len, dp=dp,
                                 micro_batch_tokens=cfg.train.micro_batch_tokens)
            assert mb * ga * dp * seq_len == cfg.train.tokens_per_step

"""The fine-tuning app end to end (``python finetune/main.py``, one process, DeepSpeed engine on CPU):
it learns a real GenomicBenchmarks task, resumes exactly, and soft-prompt tuning changes only prompts and head."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_metrics, run_finetune, tiny_args

from finetune.model import SequenceClassifier
from models import build_model, from_pretrained


@pytest.mark.slow
def test_finetuning_beats_the_majority_class_on_real_promoters(tmp_path, gb_files):
    """40 steps of 16 sequences (640 of the 2,000 training sequences) on human_nontata_promoters."""
    args = tiny_args(tmp_path, "learn", gb_files["train"], gb_files["test"], **{
        "model.d_model": 32, "model.n_layer": 2, "train.micro_batch": 16, "train.max_steps": 40,
        "train.log_every": 10, "train.eval_every": 20, "train.ckpt_every": 0})
    proc = run_finetune(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "learn"
    results = json.loads((run / "results.json").read_text())
    test = results["test"]
    assert test["examples"] == 300
    assert test["accuracy"] >= test["majority_accuracy"] + 0.10, test
    assert test["mcc"] >= 0.25, test
    records = read_metrics(run)
    train = [r for r in records if "split" not in r]
    assert [r["step"] for r in train] == [10, 20, 30, 40]
    assert [r["step"] for r in records if r.get("split") == "valid"] == [20, 40]
    for key in ("accuracy", "mcc", "f1_macro", "f1_0", "f1_1"):
        assert key in results["valid"] and key in test
    assert list((run / "tb").iterdir()), "no TensorBoard events"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000040"


@pytest.mark.slow
def test_resume_is_exact(tmp_path, gb_files):
    """4 steps straight vs 2 steps, then the same command with max_steps=4 (same LR schedule): identical losses,
    weights and test metrics."""
    common = {"data.max_samples": 64, "train.lr_decay_steps": 4, "data.rc_prob": 0.5, "train.ckpt_every": 2}
    straight = run_finetune(tiny_args(tmp_path, "straight", gb_files["train"], gb_files["test"], **common))
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = run_finetune(tiny_args(tmp_path, "resumed", gb_files["train"], gb_files["test"],
                                   **common, **{"train.max_steps": 2}))
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_finetune(tiny_args(tmp_path, "resumed", gb_files["train"], gb_files["test"], **common))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout
    a, b = tmp_path / "straight", tmp_path / "resumed"
    losses = lambda run: [(r["step"], r["loss"]) for r in read_metrics(run) if "split" not in r]  # noqa: E731
    assert losses(a) == losses(b) and len(losses(a)) == 4
    ra, rb = (json.loads((run / "results.json").read_text()) for run in (a, b))
    assert ra["test"] == rb["test"]
    wa, wb = (torch.load(run / "checkpoints" / "step-00000004" / "mp_rank_00_model_states.pt",
                         weights_only=False)["module"] for run in (a, b))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.mark.slow
def test_soft_prompts_change_only_prompts_and_head(tmp_path, gb_files):
    backbone_dir = tmp_path / "backbone"
    torch.manual_seed(11)
    build_model(dict(d_model=16, n_layer=1, l_max=256)).save_pretrained(backbone_dir)
    args = tiny_args(tmp_path, "prompt", gb_files["small"], gb_files["test"], **{
        "backbone.source": "pretrained", "backbone.path": backbone_dir, "tuning.mode": "soft_prompt",
        "tuning.num_prompts": 4, "train.max_steps": 1, "data.max_samples": 32, "head.pooling": "last"})
    proc = run_finetune(args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = SequenceClassifier(from_pretrained(backbone_dir), 2, pooling="last", mode="soft_prompt",
                                num_prompts=4, seed=3).state_dict()
    after = torch.load(tmp_path / "prompt" / "checkpoints" / "step-00000001" / "mp_rank_00_model_states.pt",
                       weights_only=False)["module"]
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"prompt", "head.weight", "head.bias"}


@pytest.mark.slow
def test_species_task_runs_through_the_app(tmp_path, sample_data):
    """``data.format=species``: the three great-ape mitochondrial genomes, windows of 256 bases, mean pooling;
    the final test pass scores the same fixed windows for every class."""
    import subprocess
    import sys

    mito = sample_data / "species" / "mito"
    task = tmp_path / "apes"
    prep = subprocess.run([sys.executable, "-m", "data_prep", "species", "--out", str(task), "--quiet",
                           "--holdout-fraction", "0.1",
                           "--genome", f"human={mito / 'human_Homo_sapiens_NC_012920.1.fa.gz'}",
                           "--genome", f"chimpanzee={mito / 'chimp_Pan_troglodytes_NC_001643.1.fa.gz'}",
                           "--genome", f"orangutan={mito / 'orangutan_Pongo_abelii_NC_002083.1.fa.gz'}"],
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr
    args = [f"run.out_dir={tmp_path}", "run.name=apes", "data.format=species", f"data.task_dir={task}",
            "data.seq_len=256", "model.d_model=16", "model.n_layer=1", "model.l_max=256", "train.micro_batch=8",
            "train.max_steps=3", "train.eval_batches=3", "train.log_every=1"]
    proc = run_finetune(args)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads((tmp_path / "apes" / "results.json").read_text())
    assert results["class_names"] == ["human", "chimpanzee", "orangutan"]
    assert results["test"]["examples"] == 24 and results["valid"]["examples"] == 24
    assert set(results["test"]) >= {"f1_human", "f1_chimpanzee", "f1_orangutan", "mcc"}


def test_bf16_with_zero_1_runs(tmp_path, gb_files):
    """The shipped task configs' precision (bf16, ZeRO 1): the fp32 pooled features meet a bf16 head."""
    args = tiny_args(tmp_path, "bf16", gb_files["small"], gb_files["small"], **{
        "train.precision": "bf16", "parallel.zero_stage": 1, "train.max_steps": 2, "train.ckpt_every": 0})
    proc = run_finetune(args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16") if "split" not in r]
    assert len(losses) == 2 and all(0.0 < loss < 5.0 for loss in losses), losses

"""Every task config resolves against the schema; the GenomicBenchmarks configs carry HyenaDNA's recipe; the sbatch
script refuses a bad command line before starting anything."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from finetune.main import resolve

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "finetune").glob("*.yaml"))
GB_TASKS = {"dummy_mouse_enhancers_ensembl", "demo_coding_vs_intergenomic_seqs", "demo_human_or_worm",
            "human_enhancers_cohn", "human_enhancers_ensembl", "human_ensembl_regulatory", "human_nontata_promoters",
            "human_ocr_ensembl"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves(path):
    cfg = resolve(path, [])
    assert cfg.run.name == path.stem or path.stem.startswith("species")


def test_the_eight_genomic_benchmarks_tasks_use_the_published_recipe():
    assert GB_TASKS <= {p.stem for p in CONFIGS}
    for name in GB_TASKS:
        cfg = resolve(REPO / "configs" / "finetune" / f"{name}.yaml", [])
        t = cfg.train
        assert (t.lr, t.min_lr, t.weight_decay, t.micro_batch * t.grad_accum, t.epochs, t.grad_clip) == (
            6e-4, 6e-5, 0.1, 128, 100, 1.0)
        assert (cfg.head.pooling, cfg.tuning.mode, cfg.data.padding_side, cfg.data.rc_prob) == ("mean", "full",
                                                                                                "left", 0.0)


def test_finetune_sbatch_script_refuses_a_missing_config(tmp_path):
    done = subprocess.run(["bash", str(REPO / "slurm" / "finetune.sh"), str(tmp_path / "absent.yaml")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "usage: sbatch" in done.stderr

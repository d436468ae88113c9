"""Resuming a run directory with another model is refused by name; ``train.init_from`` starts a run from weights."""

import shutil

import pytest
import torch
import yaml

from launch_helpers import losses, run_ranks, start_ranks, tiny_args
from models import build_model
from models.config import ModelConfig
from pretrain.export import load_checkpoint_model
from pretrain.warm_start import check_resume_config, config_differences, load_init_weights

TINY = {"d_model": 32, "n_layer": 1, "d_inner": 64, "l_max": 128}  # the model of launch_helpers.tiny_args


def test_config_differences_name_each_key_and_ignore_activation_checkpointing():
    old = {"model": {"d_model": 32, "checkpoint": False, "hyena": {"order": 2}}, "train": {"lr": 1.0}}
    new = {"model": {"d_model": 64, "checkpoint": True, "hyena": {"order": 3}}, "train": {"lr": 2.0}}
    assert config_differences(old, new) == ["model.d_model: 32 in the checkpoint, 64 now",
                                            "model.hyena.order: 2 in the checkpoint, 3 now"]
    assert config_differences(old, new, keys=("train.lr",)) == ["train.lr: 1.0 in the checkpoint, 2.0 now"]


def test_a_run_directory_without_checkpoint_is_not_checked(tmp_path):
    check_resume_config(tmp_path / "new-run", "model: {d_model: 64}\n")  # nothing to compare: no error


@pytest.mark.slow
@pytest.mark.distributed
def test_resuming_with_another_model_names_the_keys_and_the_ways_out(hg38_shards, runs, straight):
    shutil.copytree(straight, runs / "reshaped")
    saved_config = (runs / "reshaped" / "config.yaml").read_text()
    launch = start_ranks(tiny_args(hg38_shards, runs, "reshaped", **{"model.d_model": 64}), runs / "logs-reshaped",
                         nproc=1)
    assert launch.wait() == [2]
    out = launch.output(0)
    assert "model.d_model: 32 in the checkpoint, 64 now" in out and "cannot resume from step-00000008" in out
    assert "a new run.name=" in out and f"train.init_from={runs / 'reshaped' / 'checkpoints' / 'step-00000008'}" in out
    assert "size mismatch" not in out and "Traceback" not in out
    assert (runs / "reshaped" / "config.yaml").read_text() == saved_config  # the run's own config is kept


def _same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.slow
def test_init_from_a_checkpoint_or_an_export_copies_the_weights(straight, tmp_path):
    trained, _ = load_checkpoint_model(straight)
    fresh = build_model(ModelConfig(**TINY))
    assert load_init_weights(fresh, straight).name == "step-00000008"
    _same_weights(fresh, trained)
    trained.save_pretrained(tmp_path / "export")
    fresh = build_model(ModelConfig(**TINY))
    assert load_init_weights(fresh, tmp_path / "export") == tmp_path / "export"
    _same_weights(fresh, trained)
    with pytest.raises(ValueError, match=r"another model:\n  model.d_model: 32 there, 64 now"):
        load_init_weights(build_model(ModelConfig(**dict(TINY, d_model=64))), straight / "checkpoints")
    with pytest.raises(ValueError, match="train.init_from=.*nope: no such file"):
        load_init_weights(fresh, tmp_path / "nope")
    with pytest.raises(ValueError, match="is not a training checkpoint"):
        load_init_weights(fresh, tmp_path)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_run_started_from_trained_weights_begins_at_step_0_with_them(hg38_shards, runs, straight):
    args = tiny_args(hg38_shards, runs, "warm", **{"train.init_from": straight, "train.max_steps": 2})
    out = run_ranks(args, runs / "logs-warm").output(0)
    assert "initialised the model weights from" in out and "step-00000008" in out and "resumed from" not in out
    got, ref = losses(runs / "warm"), losses(straight)
    assert sorted(got) == [1, 2]
    # Step 1 sees the same batch as the straight run's step 1 (same seed, data order from the start), but with
    # weights that have already trained 8 steps: a clearly lower loss.
    assert got[1] < ref[1] - 0.05, (got, ref)
    saved = yaml.safe_load((runs / "warm" / "config.yaml").read_text())
    assert saved["train"]["init_from"] == str(straight)

"""The training app with tensor parallelism on real hg38 shards (gloo, CPU).

A 12-step run (tiny Hyena, windows 64 then 128, ZeRO 1, gradient clipping, evaluation every 4 steps) with
parallel.tensor=2 on 2 processes logs the losses (train and valid) and gradient norms of the same run in one
process within 1e-5; stopped after 8 steps and restarted it reproduces its own losses bit for bit; its per-TP-rank
checkpoint exports to the weights of a model whose logits match the one-process run's; resuming it without
tensor parallelism, or asking for a degree that does not divide the world or ZeRO 0, is refused with a message
saying what to do.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))  # the app tests' launch helpers
import launch_helpers as lh  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
STEPS = 12


@pytest.fixture(scope="module")
def shards(hg38_shards) -> Path:
    return hg38_shards


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tp_runs")


def _args(shards, runs, name, **overrides):
    return lh.tiny_args(shards, runs, name, **{"train.max_steps": STEPS, "train.grad_clip": 0.5, **overrides})


@pytest.fixture(scope="module")
def one_process(shards, runs):
    lh.run_ranks(_args(shards, runs, "tp1"), runs / "logs-tp1", nproc=1)
    return runs / "tp1"


@pytest.fixture(scope="module")
def tp2(shards, runs):
    lh.run_ranks(_args(shards, runs, "tp2", **{"parallel.tensor": 2}), runs / "logs-tp2")
    return runs / "tp2"


def test_tp2_logs_the_losses_of_one_process(one_process, tp2):
    ref, got = lh.read_metrics(one_process), lh.read_metrics(tp2)
    assert [r["step"] for r in got[0]] == list(range(1, STEPS + 1)) and [r["seq_len"] for r in got[0]][3:5] == [64, 128]
    assert got[0][-1]["loss"] < got[0][0]["loss"] - 0.3  # it learns
    for split in (0, 1):  # train lines, then the validation lines (every 4 steps)
        assert [r["step"] for r in got[split]] == [r["step"] for r in ref[split]]
        assert [r["loss"] for r in got[split]] == pytest.approx([r["loss"] for r in ref[split]], rel=1e-5)
    # the clipping norm is the whole model's (squares of the TP shards summed, replicated parameters once)
    assert [r["grad_norm"] for r in got[0]] == pytest.approx([r["grad_norm"] for r in ref[0]], rel=1e-5)
    assert [r["eval_tokens"] for r in got[1]] == [r["eval_tokens"] for r in ref[1]]
    assert [r["tokens"] for r in got[0]] == [r["tokens"] for r in ref[0]]


def test_tp2_resume_is_bitwise_exact(shards, runs, tp2):
    for stop in (8, STEPS):  # the second launch resumes from step 8 (periodic checkpoints every 4)
        launch = lh.run_ranks(_args(shards, runs, "tp2-resumed", **{"parallel.tensor": 2, "train.max_steps": stop}),
                              runs / f"logs-tp2-resumed-{stop}")
    assert "resumed from" in launch.output(0) and "step-00000008" in launch.output(0)
    assert lh.losses(runs / "tp2-resumed") == lh.losses(tp2)  # float equality: the same bits
    ckpt = sorted((tp2 / "checkpoints").glob("step-*"))[-1]
    assert {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"} <= {p.name for p in ckpt.iterdir()}


def test_tp2_checkpoint_exports_the_trained_weights(one_process, tp2, tmp_path):
    logits = {run.name: lh.exported_logits(run, tmp_path / run.name) for run in (one_process, tp2)}
    torch.testing.assert_close(logits["tp2"], logits["tp1"], rtol=1e-3, atol=1e-3)


def test_resuming_without_tensor_parallelism_is_refused(shards, runs, tp2):
    launch = lh.start_ranks(_args(shards, runs, "tp2", **{"train.max_steps": STEPS + 4}), runs / "logs-tp2-as-dp2")
    assert launch.wait() == [2, 2]
    out = launch.output(0)
    assert ("written with 1 data-parallel x parallel.sequence=1 x parallel.tensor=2 ranks but this run has 2 x "
            "parallel.sequence=1") in out
    assert "Resume with parallel.sequence=1 parallel.tensor=2" in out and "train.init_from=" in out


@pytest.mark.parametrize("overrides, message", [
    ({"parallel.tensor": 4}, "parallel.tensor=4 does not divide the world size 2"),
    ({"parallel.tensor": 2, "parallel.zero_stage": 0}, "parallel.tensor=2 needs parallel.zero_stage=1 or 2"),
])
def test_bad_tensor_parallel_settings_are_refused(shards, runs, overrides, message):
    name = "tp-bad-" + "-".join(f"{v}" for v in overrides.values())
    launch = lh.start_ranks(_args(shards, runs, name, **overrides), runs / f"logs-{name}")
    assert launch.wait(timeout=120) == [2, 2]
    assert message in launch.output(0)

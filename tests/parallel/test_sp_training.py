"""The training app with sequence parallelism on real hg38 shards (gloo, CPU).

A 20-step run (tiny Hyena, windows 64 then 128, ZeRO 1, evaluation every 4 steps) with parallel.sequence=2
through the deepspeed launcher logs the losses (train and valid) of the same run in one process within 1e-5;
stopped after 10 steps and restarted it reproduces its own losses bit for bit; its checkpoint exports to the
weights of a model that scores like the one-process run's; resuming it with another SP degree, or starting
with an SP degree that does not divide the world, is refused with a message saying what to do.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pretrain"))  # the app tests' launch helpers
import launch_helpers as lh  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture(scope="module")
def shards(hg38_shards) -> Path:
    return hg38_shards


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("sp_runs")


def _args(shards, runs, name, **overrides):
    return lh.tiny_args(shards, runs, name, **{"train.max_steps": 20, **overrides})


def _deepspeed(args, nproc=2):
    cmd = [str(lh.REPO / ".venv" / "bin" / "deepspeed"), "--num_gpus", str(nproc), "--master_port",
           str(lh.free_port()), str(lh.MAIN), *map(str, args)]
    if not os.path.exists(cmd[0]):
        cmd[0:1] = [sys.executable, "-m", "deepspeed.launcher.runner"]
    return subprocess.run(cmd, cwd=lh.REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def one_process(shards, runs):
    lh.run_ranks(_args(shards, runs, "sp1"), runs / "logs-sp1", nproc=1)
    return runs / "sp1"


@pytest.fixture(scope="module")
def sp2(shards, runs):
    done = _deepspeed(_args(shards, runs, "sp2", **{"parallel.sequence": 2}))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return runs / "sp2"


def test_sp2_logs_the_losses_of_one_process(one_process, sp2):
    ref, got = lh.read_metrics(one_process), lh.read_metrics(sp2)
    assert [r["step"] for r in got[0]] == list(range(1, 21)) and [r["seq_len"] for r in got[0]][3:5] == [64, 128]
    assert got[0][-1]["loss"] < got[0][0]["loss"] - 0.5  # it learns
    for split in (0, 1):  # train lines, then the validation lines (every 4 steps: the evaluate path with SP)
        assert [r["step"] for r in got[split]] == [r["step"] for r in ref[split]]
        assert [r["loss"] for r in got[split]] == pytest.approx([r["loss"] for r in ref[split]], rel=1e-5)
    assert [r["eval_tokens"] for r in got[1]] == [r["eval_tokens"] for r in ref[1]]
    assert [r["tokens"] for r in got[0]] == [r["tokens"] for r in ref[0]]


def test_sp2_resume_is_bitwise_exact(shards, runs, sp2):
    for stop in (10, 20):  # the second launch resumes from step 10 (periodic checkpoints every 4 + the stop)
        launch = lh.run_ranks(_args(shards, runs, "sp2-resumed", **{"parallel.sequence": 2, "train.max_steps": stop}),
                              runs / f"logs-sp2-resumed-{stop}")
    assert "resumed from" in launch.output(0) and "step-00000010" in launch.output(0)
    assert lh.losses(runs / "sp2-resumed") == lh.losses(sp2)  # float equality: the same bits
    straight = {r["step"]: r["loss"] for r in lh.read_metrics(sp2)[1]}  # every 4 steps (+ the first life's end)
    resumed = {r["step"]: r["loss"] for r in lh.read_metrics(runs / "sp2-resumed")[1]}
    assert {step: resumed[step] for step in straight} == straight


def test_sp2_checkpoint_exports_the_trained_weights(one_process, sp2, tmp_path):
    logits = {run.name: lh.exported_logits(run, tmp_path / run.name) for run in (one_process, sp2)}
    torch.testing.assert_close(logits["sp2"], logits["sp1"], rtol=1e-3, atol=1e-3)


def test_resuming_with_another_sp_degree_is_refused(shards, runs, sp2):
    launch = lh.start_ranks(_args(shards, runs, "sp2", **{"train.max_steps": 24}), runs / "logs-sp2-as-dp2")
    assert launch.wait() == [2, 2]
    out = launch.output(0)
    assert "written with 1 data-parallel x parallel.sequence=2 ranks but this run has 2 x parallel.sequence=1" in out
    assert "Resume with parallel.sequence=2" in out and "train.init_from=" in out


def test_sp_degree_that_does_not_divide_the_world_is_refused(shards, runs):
    launch = lh.start_ranks(_args(shards, runs, "sp4-on-2", **{"parallel.sequence": 4}), runs / "logs-sp4-on-2")
    assert launch.wait(timeout=120) == [2, 2]
    assert "parallel.sequence=4 does not divide the world size 2" in launch.output(0)

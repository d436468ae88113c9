"""The training app end to end on real hg38 shards, two gloo ranks (DESIGN §8).

One straight 8-step run (fixture ``straight``: ZeRO 1, windows 64 then 128 from step 5, gradient accumulation 2)
is the reference: resumed, interrupted and other-ZeRO-stage runs must reproduce its per-step losses.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from launch_helpers import MAIN, REPO, free_port, losses, read_metrics, run_ranks, start_ranks, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
PROBE = REPO / "tests" / "pretrain" / "probe_engine.py"


@pytest.fixture(scope="module")
def resumed(hg38_shards, runs):
    """The same run as three processes' lives: steps 1-3, 4 (ends at the warm-up boundary), 5-8."""
    for stop in (3, 4, 8):
        launch = run_ranks(tiny_args(hg38_shards, runs, "resumed", **{"train.max_steps": stop}),
                           runs / f"logs-resumed-{stop}")
        if stop > 3:
            assert "resumed from" in launch.output(0)
    return runs / "resumed"


def test_run_learns_and_writes_its_run_directory(straight):
    train, valid = read_metrics(straight)
    assert [r["step"] for r in train] == list(range(1, 9))
    assert [r["seq_len"] for r in train] == [64] * 4 + [128] * 4  # warm-up stage, then the final length
    assert [r["tokens"] for r in train] == [1024 * s for s in range(1, 9)]
    for record in train:
        assert {"loss", "ppl", "lr", "grad_norm", "tokens_per_s", "mfu", "max_mem_gb"} <= set(record)
        assert record["mfu"] is None  # CPU: no peak FLOP/s, so no made-up MFU
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert [r["step"] for r in valid] == [4, 8] and valid[-1]["loss"] < valid[0]["loss"]
    assert (straight / "config.yaml").is_file()
    ckpts = straight / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-00000008"
    assert {p.name for p in ckpts.glob("step-*")} == {"step-00000004", "step-00000008"}


def test_tensorboard_events_hold_the_logged_scalars(straight):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(straight / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/seq_len", "train/tokens",
            "train/tokens_per_s", "train/max_mem_gb", "valid/loss", "valid/ppl"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert [e.value for e in acc.Scalars("train/seq_len")] == [64] * 4 + [128] * 4


def test_resume_is_bitwise_exact_across_the_warmup_boundary(straight, resumed):
    assert losses(resumed) == losses(straight)  # float equality: the same bits
    assert [r["loss"] for r in read_metrics(resumed)[1] if r["step"] in (4, 8)] == \
        [r["loss"] for r in read_metrics(straight)[1]]


def test_damaged_latest_falls_back_to_the_previous_checkpoint(hg38_shards, runs, straight, resumed):
    run = runs / "damaged"
    shutil.copytree(resumed, run)
    target = run / "checkpoints" / "step-00000008" / "mp_rank_00_model_states.pt"
    target.write_bytes(target.read_bytes()[:-100])  # truncated
    launch = run_ranks(tiny_args(hg38_shards, runs, "damaged"), runs / "logs-damaged")
    out = launch.output(0)
    assert "step-00000008 is damaged" in out and "falling back" in out
    assert "resumed from" in out and "step-00000004 at step 4" in out
    assert losses(run) == losses(straight)


def test_sigterm_finishes_the_step_saves_and_resumes(hg38_shards, runs, straight):
    args = tiny_args(hg38_shards, runs, "signal", **{"train.max_steps": 40})
    launch = start_ranks(args, runs / "logs-signal-1")
    metrics, deadline = runs / "signal" / "metrics.jsonl", time.time() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in launch.procs), launch.output(0)[-3000:]
        time.sleep(0.02)
    for proc in launch.procs:
        proc.send_signal(signal.SIGTERM)
    assert launch.wait() == [0, 0]
    assert "received SIGTERM" in launch.output(0)
    stopped = int((runs / "signal" / "checkpoints" / "latest").read_text().split("-")[1])
    assert 2 <= stopped < 8, f"the signal landed at step {stopped}"
    run_ranks(tiny_args(hg38_shards, runs, "signal", **{"train.max_steps": 8}), runs / "logs-signal-2")
    assert losses(runs / "signal") == losses(straight)


def test_ctrl_c_finishes_the_step_saves_exits_130_and_the_same_command_resumes(hg38_shards, runs, straight):
    """Ctrl-C reaches every rank (the terminal signals the whole process group), then a launcher forwards it once
    more: one save, exit 130 on every rank, one line saying how to resume, and the same command resumes exactly."""
    args = tiny_args(hg38_shards, runs, "ctrl-c", **{"train.max_steps": 8})
    launch = start_ranks(args, runs / "logs-ctrl-c-1")
    metrics, deadline = runs / "ctrl-c" / "metrics.jsonl", time.time() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
        assert time.time() < deadline and all(p.poll() is None for p in launch.procs), launch.output(0)[-3000:]
        time.sleep(0.02)
    for _ in range(2):
        for proc in launch.procs:
            proc.send_signal(signal.SIGINT)
    assert launch.wait() == [130, 130], launch.output(0)[-3000:]
    out = launch.output(0)
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    assert out.count("run the same command again to resume") == 1
    stopped = int((runs / "ctrl-c" / "checkpoints" / "latest").read_text().split("-")[1])
    assert 2 <= stopped < 8 and f"interrupted: saved step {stopped} to" in out
    run_ranks(args, runs / "logs-ctrl-c-2")
    assert losses(runs / "ctrl-c") == losses(straight)


def test_zero2_through_the_deepspeed_launcher(hg38_shards, runs, straight):
    args = tiny_args(hg38_shards, runs, "zero2", **{"parallel.zero_stage": 2})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [str(REPO / ".venv" / "bin" / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(MAIN), *args]
    if not os.path.exists(cmd[0]):
        cmd[0:1] = [sys.executable, "-m", "deepspeed.launcher.runner"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got, ref = losses(runs / "zero2"), losses(straight)
    assert got.keys() == ref.keys() and got[8] < got[1] - 0.5
    assert got == pytest.approx(ref, rel=1e-5)  # same maths, different reduction layout


def test_ctrl_c_in_a_terminal_under_the_deepspeed_launcher_saves(hg38_shards, runs):
    """Ctrl-C reaches the launchers and the ranks (one process group); DeepSpeed's launcher also sends the ranks
    SIGTERM. The ranks save once and print the resume line. The `deepspeed` command's own exit is DeepSpeed's: not
    0, and it may return before the ranks have finished saving (its runner dies of the SIGINT), hence the wait."""
    args = tiny_args(hg38_shards, runs, "ctrl-c-ds", **{"train.max_steps": 40})
    cmd = [str(REPO / ".venv" / "bin" / "deepspeed"), "--num_gpus", "2", "--master_port", str(free_port()),
           str(MAIN), *args]
    if not os.path.exists(cmd[0]):
        cmd[0:1] = [sys.executable, "-m", "deepspeed.launcher.runner"]
    with (runs / "ctrl-c-ds.log").open("w") as log:
        launcher = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    metrics, deadline = runs / "ctrl-c-ds" / "metrics.jsonl", time.time() + 240
    try:
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert time.time() < deadline and launcher.poll() is None, (runs / "ctrl-c-ds.log").read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(launcher.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        assert launcher.wait(timeout=120) != 0
        deadline = time.time() + 120
        while "run the same command again" not in (runs / "ctrl-c-ds.log").read_text():
            assert time.time() < deadline, (runs / "ctrl-c-ds.log").read_text()[-3000:]
            time.sleep(0.1)
        time.sleep(1)  # anything printed after the line (a second one would fail below)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    out = (runs / "ctrl-c-ds.log").read_text()
    assert out.count("run the same command again to resume") == 1, out[-3000:]
    assert "pretrain/" not in "".join(line for line in out.splitlines() if line.startswith("  File "))  # no trace
    # of ours (DeepSpeed's runner prints its own KeyboardInterrupt traceback)
    stopped = int((runs / "ctrl-c-ds" / "checkpoints" / "latest").read_text().split("-")[1])
    assert 2 <= stopped < 40 and f"interrupted: saved step {stopped} to" in out


@pytest.mark.parametrize("checkpoint", [False, True], ids=["no-recompute", "checkpointed"])
def test_zero3_export_gives_the_engine_logits(hg38_shards, runs, straight, tmp_path, checkpoint):
    """ZeRO-3 partitions every parameter; with model.checkpoint the blocks (and Hyena's filter MLP) are
    recomputed in the backward, where the partitioned parameters must still give the one-process gradients."""
    name = "zero3-ckpt" if checkpoint else "zero3"
    run_ranks(tiny_args(hg38_shards, runs, name, **{"parallel.zero_stage": 3, "model.checkpoint": checkpoint}),
              runs / f"logs-{name}", script=PROBE)
    got, ref = losses(runs / name), losses(straight)
    assert got[8] < got[1] - 0.5 and got == pytest.approx(ref, rel=1e-5)
    done = subprocess.run([sys.executable, "-m", "pretrain.export", str(runs / name), "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    from models import from_pretrained

    probe = torch.load(runs / name / "probe.pt")
    model = from_pretrained(tmp_path)
    with torch.no_grad():
        logits = model(probe["input_ids"])
    torch.testing.assert_close(logits, probe["logits"], rtol=1e-6, atol=1e-6)


def test_nonfinite_losses_skip_the_update_then_stop(hg38_shards, runs, tmp_path):
    """Rank 0's loss is NaN at step 2 (3rd micro-batch) and from step 4 on; at most 2 in a row are tolerated."""
    args = tiny_args(hg38_shards, runs, "nan", **{"parallel.zero_stage": 0, "train.ckpt_every": 1,
                                                  "train.max_nonfinite_steps": 2, "train.keep_checkpoints": 10})
    launch = start_ranks(args, runs / "logs-nan", script=PROBE, env={"NAN_CALLS": "3,7+"})
    assert launch.wait() == [3, 3]
    assert "stopping: 3 consecutive optimizer steps had a non-finite loss" in launch.output(0)
    train, _ = read_metrics(runs / "nan")
    assert [(r["step"], r["loss"] is None, r["skipped_steps"]) for r in train] == \
        [(1, False, 0), (2, True, 1), (3, False, 0), (4, True, 1), (5, True, 1), (6, True, 1)]
    weights = {s: _exported(runs / "nan" / "checkpoints" / f"step-{s:08d}", tmp_path / str(s)) for s in (1, 2, 3, 6)}
    assert all(torch.equal(weights[1][k], weights[2][k]) for k in weights[1])  # step 2 changed nothing
    assert all(torch.equal(weights[3][k], weights[6][k]) for k in weights[3])
    assert not all(torch.equal(weights[1][k], weights[3][k]) for k in weights[1])


def _exported(ckpt, out):
    from models import from_pretrained
    from pretrain.export import main as export

    assert export([str(ckpt), "--out", str(out)]) == 0
    return from_pretrained(out).state_dict()

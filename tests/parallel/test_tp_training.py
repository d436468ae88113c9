"""The training app with tensor parallelism on real hg38 shards (gloo, CPU).

A 12-step run (tiny Hyena, windows 64 then 128, ZeRO 1, gradient clipping, evaluation every 4 steps) with
parallel.tensor=2 on 2 processes logs the losses (train and valid) and gradient norms of the same run in one
process within 1e-5; stopped after 8 steps and restarted it reproduces its own losses bit for bit; its per-TP-rank
checkpoint exports to the weights of a model whose logits match the one-process run's; resuming it without
tensor parallelism, or asking for a degree that does not divide the world, is refused with a message saying what
to do. The same loss equality holds for Mamba and the Transformer (6 steps), for TP 2 x SP 2 on 4 processes, and
for ZeRO 0 at TP 2 and ZeRO 3 at TP 2 x DP 2 (stopped after 4 steps and resumed to 8; the export matches the
one-process step 8). A bf16 TP 2 checkpoint exports the fp32 masters of both TP ranks; a TP 2 run warm-started
from a one-process export starts at the loss a one-process run from that export starts at.
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
    ({"parallel.tensor": 2, "parallel.sequence": 2, "parallel.zero_stage": 3},
     "parallel.zero_stage=3 with parallel.sequence=2 is not supported"),
])
def test_bad_tensor_parallel_settings_are_refused(shards, runs, overrides, message):
    name = "tp-bad-" + "-".join(f"{v}" for v in overrides.values())
    launch = lh.start_ranks(_args(shards, runs, name, **overrides), runs / f"logs-{name}")
    assert launch.wait(timeout=120) == [2, 2]
    assert message in launch.output(0)


SHORT = 6  # steps of the runs below: 4 at window 64, 2 at 128 (one evaluation at each length)
ARCHS = {"mamba": {"model.arch": "mamba", "model.mamba.d_state": 4},
         "transformer": {"model.arch": "transformer", "model.transformer.n_head": 4}}


def _assert_same_run(ref, got, steps: int, valid_too: bool = True) -> None:
    """The first ``steps`` train lines (loss, gradient norm) and the validation lines up to there agree in 1e-5
    (``valid_too=False`` with data parallelism: each DP rank then evaluates batches of its own)."""
    (ref_train, ref_valid), (train, valid) = ref, got
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert [r["loss"] for r in train] == pytest.approx([r["loss"] for r in ref_train[:steps]], rel=1e-5)
    assert [r["grad_norm"] for r in train] == pytest.approx([r["grad_norm"] for r in ref_train[:steps]], rel=1e-5)
    if not valid_too:
        return
    ref_valid = [r for r in ref_valid if r["step"] <= steps and r["step"] in {v["step"] for v in valid}]
    assert len(ref_valid) >= 1 and [r["step"] for r in valid][:len(ref_valid)] == [r["step"] for r in ref_valid]
    assert [r["loss"] for r in valid[:len(ref_valid)]] == pytest.approx([r["loss"] for r in ref_valid], rel=1e-5)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_tp2_logs_the_losses_of_one_process_for(shards, runs, arch):
    for tp, nproc in ((1, 1), (2, 2)):
        lh.run_ranks(_args(shards, runs, f"{arch}-tp{tp}", **ARCHS[arch], **{"train.max_steps": SHORT,
                                                                              "parallel.tensor": tp}),
                     runs / f"logs-{arch}-tp{tp}", nproc=nproc)
    ref, got = lh.read_metrics(runs / f"{arch}-tp1"), lh.read_metrics(runs / f"{arch}-tp2")
    _assert_same_run(ref, got, SHORT)
    assert got[0][-1]["loss"] < got[0][0]["loss"] - 0.3  # it learns


def test_tp2_sp2_logs_the_losses_of_one_process(one_process, shards, runs):
    lh.run_ranks(_args(shards, runs, "tp2-sp2", **{"train.max_steps": SHORT, "parallel.tensor": 2,
                                                   "parallel.sequence": 2}), runs / "logs-tp2-sp2", nproc=4)
    _assert_same_run(lh.read_metrics(one_process), lh.read_metrics(runs / "tp2-sp2"), SHORT)


@pytest.mark.parametrize("zero_stage, nproc", [(0, 2), (3, 4)])
def test_tp2_with_zero_stage_trains_resumes_and_exports(one_process, shards, runs, tmp_path, zero_stage, nproc):
    """ZeRO 0 at TP 2; ZeRO 3 at TP 2 x DP 2, each TP rank's parameters partitioned over its 2 DP ranks."""
    name = f"tp2-zero{zero_stage}"
    for stop in (4, 8):  # the second launch resumes from the step-4 checkpoint
        launch = lh.run_ranks(_args(shards, runs, name, **{"train.max_steps": stop, "parallel.tensor": 2,
                                                           "parallel.zero_stage": zero_stage}),
                              runs / f"logs-{name}-{stop}", nproc=nproc)
    assert "resumed from" in launch.output(0) and "step-00000004" in launch.output(0)
    # ZeRO 0: the optimizer clips by the whole model's norm (TP shards summed, replicated parameters once)
    _assert_same_run(lh.read_metrics(one_process), lh.read_metrics(runs / name), 8, valid_too=nproc == 2)
    if zero_stage == 3:
        ckpt = sorted((runs / name / "checkpoints").glob("step-*"))[-1]
        assert {f"zero_pp_rank_{d}_mp_rank_{t:02d}_optim_states.pt" for d in (0, 1) for t in (0, 1)} <= {
            p.name for p in ckpt.iterdir()}
    ref = lh.exported_logits(one_process / "checkpoints" / "step-00000008", tmp_path / "tp1")
    torch.testing.assert_close(lh.exported_logits(runs / name, tmp_path / name), ref, rtol=1e-3, atol=1e-3)


def _merged_modules(ckpt: Path) -> dict:
    """The whole model's module weights (bf16 in a bf16 run) from the checkpoint's per-TP-rank module files."""
    from parallel import merge_tensor_parallel_state_dicts

    specs = torch.load(ckpt / "trainer_state.pt", weights_only=False)["tensor_parallel_specs"]
    return merge_tensor_parallel_state_dicts(
        [torch.load(ckpt / f"mp_rank_{t:02d}_model_states.pt", weights_only=False)["module"] for t in (0, 1)], specs)


def test_bf16_tp2_exports_the_fp32_masters(shards, runs, tmp_path):
    from safetensors.torch import load_file

    for tp, nproc in ((1, 1), (2, 2)):
        lh.run_ranks(_args(shards, runs, f"bf16-tp{tp}", **{"train.max_steps": 4, "train.precision": "bf16",
                                                            "parallel.tensor": tp}),
                     runs / f"logs-bf16-tp{tp}", nproc=nproc)
    logits = {tp: lh.exported_logits(runs / f"bf16-tp{tp}", tmp_path / f"tp{tp}") for tp in (1, 2)}
    exported = load_file(tmp_path / "tp2" / "model.safetensors")
    modules = _merged_modules(sorted((runs / "bf16-tp2" / "checkpoints").glob("step-*"))[-1])
    split = [k for k in exported if exported[k].dtype == torch.float32 and modules[k].dtype == torch.bfloat16]
    assert len(split) > 10 and all(torch.equal(exported[k].to(torch.bfloat16), modules[k]) for k in split)
    # the masters, not the bf16 weights widened: most of them are not representable in bf16
    assert sum(not torch.equal(exported[k], modules[k].float()) for k in split) > len(split) // 2
    # the same model as the one-process bf16 run (up to the bf16 rounding of four steps' arithmetic)
    torch.testing.assert_close(logits[2], logits[1], rtol=0, atol=5e-3)


def test_tp2_warm_starts_from_a_one_process_export(one_process, shards, runs, tmp_path):
    export = tmp_path / "tp1-export"
    lh.exported_logits(one_process, export)
    for tp, nproc in ((1, 1), (2, 2)):
        lh.run_ranks(_args(shards, runs, f"warm-tp{tp}", **{"train.max_steps": 1, "train.eval_every": 0,
                                                            "parallel.tensor": tp, "train.init_from": export}),
                     runs / f"logs-warm-tp{tp}", nproc=nproc)
    first = {tp: lh.read_metrics(runs / f"warm-tp{tp}")[0][0]["loss"] for tp in (1, 2)}
    assert first[2] == pytest.approx(first[1], rel=1e-5)
    assert first[2] < lh.read_metrics(one_process)[0][0]["loss"] - 0.3  # the trained weights, not a fresh model

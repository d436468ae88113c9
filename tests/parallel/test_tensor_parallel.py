"""Tensor parallelism (megatron-core layers) = one process: hyena, mamba and transformer on real hg38 windows, gloo
processes on CPU.

At TP = 2, TP 2 x SP 2 and TP 2 x DP 2, the logits, the loss and EVERY parameter's gradient (gathered from the TP
shards, summed over SP, averaged over DP) equal those of the same model run whole in one process: within 1e-5
relative in float32, 1e-10 in float64 (TP = 2, also with activation checkpointing). The gathered weights equal
the whole model's exactly, and each rank holds less than the whole model. Errors are raised before any
collective. The groups of ParallelDims with tp reduce over the right ranks. Two launches: 2 processes (TP = 2),
then 4 (both four-process layouts, one after the other).
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from sp_harness import TOL, hg38_windows, tiny_model
from tp_harness import compare_to_single_process, spawn

from models.config import ModelConfig, from_dict
from parallel import (ParallelDims, check_tensor_parallel, merge_shards, merge_tensor_parallel_state_dicts,
                      shard_tensor)

ARCHS = ("hyena", "mamba", "transformer")


@pytest.fixture(scope="module")
def windows(hg38_subset):
    """Real GRCh38 (chr20) windows: 4 of 64 (+1) bases."""
    return hg38_windows(hg38_subset, 4, 64)


def _equivalence(dims, windows, cases):
    return {(arch, str(dtype), tuple(sorted(over))):
            compare_to_single_process(dims, arch, dtype, windows[:2 * dims.dp], **over) for arch, dtype, over in cases}


def _assert_equivalent(results, n_cases):
    assert len(results) == n_cases
    for (arch, dtype, over), e in results.items():
        tol = TOL[getattr(torch, dtype.split(".")[1])]
        where = f"{arch} {dtype} {' '.join(over)}"
        assert e["params"] > 10 and e["split"] >= 6, (where, e)
        assert e["local_numel"] < e["numel"], (where, e)  # each rank holds a part of the split layers
        assert e["weights"] == 0.0, f"{where}: gathered weights differ by {e['weights']:.2e}"
        assert e["logits"] <= tol, f"{where}: logits differ by {e['logits']:.2e}"
        assert e["loss"] <= tol, f"{where}: loss differs by {e['loss']:.2e}"
        assert e["grad"] <= tol, f"{where}: gradient of {e['worst_param']} differs by {e['grad']:.2e}"


# ---------------------------------------------------------------------------------------------------------
# TP = 2 (2 processes): fp32 and fp64, checkpointed blocks, runtime errors

TP2_CASES = [(arch, dtype, {}) for arch in ARCHS for dtype in (torch.float32, torch.float64)] + [
    ("hyena", torch.float64, {"checkpoint_activations": True}),
    ("mamba", torch.float64, {"checkpoint_activations": True})]


def _tp2_checks(windows):
    dims = ParallelDims(dp=1, tp=2).build()
    return {"equivalence": _equivalence(dims, windows, TP2_CASES), "errors": _runtime_errors(dims)}


def _runtime_errors(dims):
    """Each error is a ValueError raised on every rank before any collective (the group stays usable)."""
    from parallel import apply_sequence_parallel, apply_tensor_parallel

    messages = {}

    def expect(key, fn):
        try:
            fn()
        except ValueError as err:
            messages[key] = str(err)

    expect("hyena", lambda: apply_tensor_parallel(tiny_model("hyena", 64, d_model=15, d_inner=30), dims))
    expect("mamba", lambda: apply_tensor_parallel(
        tiny_model("mamba", 64, d_model=15, mamba={"d_state": 4, "expand": 3}), dims))
    expect("heads", lambda: apply_tensor_parallel(
        tiny_model("transformer", 64, d_model=18, transformer={"n_head": 3}), dims))
    expect("mlp", lambda: apply_tensor_parallel(tiny_model("transformer", 64, d_inner=33), dims))
    expect("world", lambda: ParallelDims(dp=1, sp=2, tp=2).build())
    split = apply_tensor_parallel(tiny_model("mamba", 64), dims)
    expect("twice", lambda: apply_tensor_parallel(split, dims))
    expect("after_sp", lambda: apply_tensor_parallel(
        apply_sequence_parallel(tiny_model("mamba", 64), ParallelDims(dp=1, sp=2).build()), dims))
    dist.barrier(group=dims.tp_group)  # nobody was left waiting inside a collective
    return messages


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_equals_one_process(windows, tmp_path):
    out = spawn(_tp2_checks, world=2, payload=windows, tmp=tmp_path)
    _assert_equivalent(out["equivalence"], len(TP2_CASES))
    errors = out["errors"]
    assert "model.d_model=15 is not divisible by parallel.tensor=2" in errors["hyena"]
    assert "d_inner (model.mamba.expand x model.d_model)=45 is not divisible by parallel.tensor=2" in errors["mamba"]
    assert "model.transformer.n_head=3 is not divisible by parallel.tensor=2" in errors["heads"]
    assert "MLP width (model.d_inner)=33 is not divisible by parallel.tensor=2" in errors["mlp"]
    assert "dp=1 x sp=2 x tp=2 = 4 processes, but the world has 2" in errors["world"]
    assert "already applied" in errors["twice"]
    assert "must come before apply_sequence_parallel" in errors["after_sp"]


# ---------------------------------------------------------------------------------------------------------
# TP 2 x SP 2 and TP 2 x DP 2 (one launch of 4 processes)

FOUR_CASES = [(arch, torch.float32, {}) for arch in ARCHS]


def _group_sums(dims):
    """(tp, sp, dp rank, then the sums of 2**rank over the tp, sp, dp and dp x sp groups): the sums name the ranks."""
    sums = []
    for group in (dims.tp_group, dims.sp_group, dims.dp_group, dims.dp_sp_group):
        x = torch.tensor([float(2 ** dims.rank)], dtype=torch.float64)
        dist.all_reduce(x, group=group)
        sums.append(int(x.item()))
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, (dims.tp_rank, dims.sp_rank, dims.dp_rank, *sums))
    return every


def _four_process_checks(windows):
    out = {}
    for dp, sp in ((1, 2), (2, 1)):
        dims = ParallelDims(dp=dp, sp=sp, tp=2).build()
        out["groups", dp, sp] = _group_sums(dims)
        out[dp, sp] = _equivalence(dims, windows, FOUR_CASES)
    from parallel import apply_tensor_parallel

    try:  # d_model 12: 6 channels per TP rank split over SP = 2 is fine; 18: 9 per rank is not
        apply_tensor_parallel(tiny_model("hyena", 64, d_model=18, d_inner=32), dims := ParallelDims(1, 2, 2).build())
    except ValueError as err:
        out["error"] = str(err)
    dist.barrier()
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_tp2_with_sp2_and_with_dp2_equal_one_process(windows, tmp_path):
    out = spawn(_four_process_checks, world=4, payload=windows, tmp=tmp_path)
    # sums of 2**rank: {0,1}=3 {2,3}=12 {0,2}=5 {1,3}=10 {r}=2**r; rows: (tp, sp, dp rank, tp/sp/dp/dp x sp sums)
    assert out["groups", 1, 2] == [(0, 0, 0, 3, 5, 1, 5), (1, 0, 0, 3, 10, 2, 10), (0, 1, 0, 12, 5, 4, 5),
                                   (1, 1, 0, 12, 10, 8, 10)]  # dp 1 x sp 2 x tp 2
    assert out["groups", 2, 1] == [(0, 0, 0, 3, 1, 5, 5), (1, 0, 0, 3, 2, 10, 10), (0, 0, 1, 12, 4, 5, 5),
                                   (1, 0, 1, 12, 8, 10, 10)]  # dp 2 x sp 1 x tp 2
    _assert_equivalent(out[1, 2], len(FOUR_CASES))  # TP 2 x SP 2
    _assert_equivalent(out[2, 1], len(FOUR_CASES))  # TP 2 x DP 2
    assert "model.d_model / parallel.tensor=9 is not divisible by parallel.sequence=2" in out["error"]


# ---------------------------------------------------------------------------------------------------------
# no process group


@pytest.mark.parametrize("cfg, tp, sp, message", [
    (dict(arch="hyena", d_model=30), 4, 1, "model.d_model=30 is not divisible by parallel.tensor=4"),
    (dict(arch="hyena", d_model=24, d_inner=96), 4, 4, "model.d_model / parallel.tensor=6 is not divisible by "
                                                        "parallel.sequence=4"),
    (dict(arch="mamba", d_model=30, mamba={"expand": 1}), 4, 1, "d_inner .*=30 is not divisible by parallel.tensor=4"),
    (dict(arch="transformer", d_model=48, transformer={"n_head": 6}), 4, 1, "n_head=6 is not divisible"),
    (dict(arch="transformer", d_model=48, transformer={"n_head": 6}), 2, 2, "n_head / parallel.tensor=3 is not "
                                                                             "divisible by parallel.sequence=2"),
    (dict(arch="hyena", d_model=32, d_inner=36), 8, 1, "MLP width .*=36 is not divisible by parallel.tensor=8"),
    (dict(arch="hyena"), 0, 1, "parallel.tensor must be an integer >= 1"),
])
def test_config_errors_need_no_process_group(cfg, tp, sp, message):
    with pytest.raises(ValueError, match=message):
        check_tensor_parallel(from_dict(ModelConfig, cfg, path="model"), tp, sp)


def test_unknown_architecture_and_unbuilt_dims_are_refused():
    from parallel import apply_tensor_parallel

    cfg = ModelConfig()
    cfg.arch = "rwkv"
    with pytest.raises(ValueError, match="has no tensor-parallel implementation"):
        check_tensor_parallel(cfg, 2)
    with pytest.raises(ValueError, match="needs a built ParallelDims"):
        apply_tensor_parallel(torch.nn.Linear(2, 2), ParallelDims(dp=1, tp=2))
    assert apply_tensor_parallel(model := torch.nn.Linear(2, 2), ParallelDims(dp=1)) is model


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_shards_of_fused_pieces_merge_back(stride):
    full = torch.arange(stride * 4 * 6, dtype=torch.float64).view(stride * 4, 6)
    shards = [shard_tensor(full, r, 4, 0, stride) for r in range(4)]
    # stride pieces of 4 rows, each split 4 ways: rank r holds row r of every piece
    assert all(s.shape == (stride, 6) for s in shards)
    assert torch.equal(shards[1][0], full[1]) and torch.equal(shards[1][-1], full[(stride - 1) * 4 + 1])
    assert torch.equal(merge_shards(shards, 0, stride), full)
    cols = [shard_tensor(full, r, 2, 1) for r in range(2)]
    assert torch.equal(cols[1], full[:, 3:]) and torch.equal(merge_shards(cols, 1), full)


def test_saved_shards_merge_offline_and_foreign_files_are_refused():
    full = {"w": torch.arange(12.0).view(6, 2), "b": torch.ones(3), "x._extra_state": None}
    specs = {"w": (0, 3)}
    shards = [{"w": shard_tensor(full["w"], r, 2, 0, 3), "b": full["b"].clone(), "x._extra_state": None}
              for r in range(2)]
    merged = merge_tensor_parallel_state_dicts(shards, specs)
    assert merged.keys() == {"w", "b"} and torch.equal(merged["w"], full["w"]) and torch.equal(merged["b"], full["b"])
    shards[1]["b"] = shards[1]["b"] + 1
    with pytest.raises(ValueError, match="b is replicated but differs between TP ranks 0 and 1"):
        merge_tensor_parallel_state_dicts(shards, specs)
    del shards[1]["b"]
    with pytest.raises(ValueError, match="hold different keys"):
        merge_tensor_parallel_state_dicts(shards, specs)


@pytest.mark.parametrize("overrides, message", [
    (["parallel.tensor=2", "parallel.sequence=2", "parallel.zero_stage=3"],
     "parallel.zero_stage=3 with parallel.sequence=2 is not supported"),
    (["parallel.tensor=2", "parallel.zero_stage=0", "train.precision=bf16"],
     "train.precision=bf16 with parallel.zero_stage=0 is not supported"),
    (["parallel.tensor=3", "parallel.zero_stage=1", "model.d_model=32"],
     "model.d_model=32 is not divisible by parallel.tensor=3"),
    (["parallel.tensor=2", "parallel.sequence=4", "parallel.zero_stage=1", "model.d_model=36", "model.d_inner=72"],
     r"model.d_model / parallel.tensor=18 is not divisible by parallel.sequence=4"),
])
def test_training_config_refuses_bad_tensor_parallel_settings(overrides, message):
    from pretrain.args import resolve

    with pytest.raises(ValueError, match=message):
        resolve(None, ["data.path=unused", *overrides])


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_training_config_accepts_tensor_parallelism_with_every_zero_stage(zero_stage):
    from pretrain.args import resolve

    cfg = resolve(None, ["data.path=unused", "parallel.tensor=2", f"parallel.zero_stage={zero_stage}"])
    assert (cfg.parallel.tensor, cfg.parallel.zero_stage) == (2, zero_stage)


def test_finetuning_config_refuses_tensor_parallelism():
    import yaml

    from finetune.config import build_config

    data = yaml.safe_load((Path(__file__).parents[2] / "configs/finetune/demo_human_or_worm.yaml").read_text())
    data.setdefault("parallel", {})["tensor"] = 2
    with pytest.raises(ValueError, match="parallel.tensor must be 1 for fine-tuning"):
        build_config(data)

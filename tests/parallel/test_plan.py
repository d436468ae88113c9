"""parallel.plan: ZeRO arithmetic, the activation model against measured peaks, SP choices, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models.config import ModelConfig, TransformerConfig
from parallel.plan import (Setting, activation_bytes, main, num_parameters, plan, recommend, sp_degrees, state_bytes,
                           tp_degrees, tp_num_parameters)

REPO = Path(__file__).resolve().parents[2]


def _cfg(arch: str, **kw) -> ModelConfig:
    base = {"d_model": 128, "n_layer": 2, "l_max": 1 << 20, "checkpoint_activations": True}
    return ModelConfig(arch=arch, **{**base, **kw})


def test_state_bytes_follow_zero_partitioning():
    P, N = 1000, 4
    assert state_bytes(P, precision="fp32", zero_stage=0, world=N) == (4000, 4000, 8000)
    assert state_bytes(P, precision="fp32", zero_stage=1, world=N) == (4000, 4000, 2000)
    assert state_bytes(P, precision="fp32", zero_stage=2, world=N) == (4000, 1000, 2000)
    assert state_bytes(P, precision="fp32", zero_stage=3, world=N) == (1000, 1000, 2000)
    assert state_bytes(P, precision="bf16", zero_stage=0, world=N) == (2000, 2000, 12000)  # fp32 master + m + v
    with pytest.raises(ValueError, match="zero_stage"):
        state_bytes(P, precision="fp32", zero_stage=4, world=N)
    with pytest.raises(ValueError, match="precision"):
        state_bytes(P, precision="fp16", zero_stage=0, world=N)


def test_num_parameters_is_the_built_models_count():
    cfg = _cfg("mamba", l_max=4096)
    assert num_parameters(cfg) == models.build_model(cfg).num_parameters()


@pytest.mark.parametrize("arch", ["hyena", "mamba", "transformer"])
def test_activations_are_monotone(arch):
    def est(**kw):
        kw = {"seq_len": 1 << 18, "sp": 1, "batch": 1, "checkpoint": True, **kw}
        return sum(activation_bytes(_cfg(arch), impl="torch", **kw))

    assert est(seq_len=1 << 16) < est(seq_len=1 << 17) < est(seq_len=1 << 18)
    assert est(sp=4) < est(sp=2) < est(sp=1)
    assert est(checkpoint=True) < est(checkpoint=False)
    if arch == "hyena":  # same tokens, filters and spectra half as long (the scan's chunk shrinks with the batch)
        assert est(batch=2, seq_len=1 << 17) < est(seq_len=1 << 18)
    # TP splits the mixer's (and MLP's) inner channels but not the replicated residual stream, norms and head
    assert est(tp=2) < est(tp=1) and est(tp=4) < est(tp=2) and est(tp=2) > est(tp=1) / 2
    assert est(tp=2, checkpoint=False) < est(checkpoint=False)
    cfg = _cfg(arch)
    assert sum(activation_bytes(cfg, seq_len=1 << 18, precision="bf16")) < sum(activation_bytes(cfg, seq_len=1 << 18))
    assert sum(activation_bytes(_cfg(arch, n_layer=4), seq_len=1 << 18)) > sum(activation_bytes(cfg, seq_len=1 << 18))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="divisible by sp"):
        activation_bytes(_cfg("hyena"), seq_len=1000, sp=3)
    with pytest.raises(ValueError, match="impl"):
        activation_bytes(_cfg("hyena"), seq_len=1024, impl="cuda")


def test_estimate_within_25_percent_of_measured_rss_peaks():
    """bench/models.py's measured steps (peak RSS minus the RSS before the step; fp32, checkpointing, one
    process) at 2^18 .. 2^20 against the planner's torch-kernel estimate of the same model."""
    results = json.loads((REPO / "bench" / "results" / "models.json").read_text())["results"]
    checked = 0
    for r in results:
        if "error" in r or not (1 << 18) <= r["L"] <= (1 << 20):
            continue
        cfg = _cfg(r["arch"], d_model=r["d_model"], n_layer=r["n_layer"], l_max=r["L"],
                   checkpoint_activations=r["checkpoint_activations"])
        est = sum(activation_bytes(cfg, seq_len=r["L"], impl="torch")) / 2**30
        measured = r["peak_rss_gb"] - r["base_rss_gb"]
        assert abs(est / measured - 1) <= 0.25, (r["arch"], r["L"], est, measured)
        checked += 1
    assert checked == 6


def _profiled_peak(cfg: ModelConfig, L: int, split=None) -> int:
    """Peak bytes of live tensors during one forward + backward (the profiler's allocation events); ``split``
    (e.g. apply_tensor_parallel with its dims) is applied to the model first."""
    from torch.profiler import profile

    torch.manual_seed(0)
    model = models.build_model(cfg)
    if split is not None:
        model = split(model)
    ids = torch.randint(7, 11, (1, L + 1))
    with profile(profile_memory=True) as prof:
        logits = model(ids[:, :-1])
        F.cross_entropy(logits[0], ids[0, 1:]).backward()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    grads = 4 * model.num_parameters()  # parameter gradients appear during the backward; not activations
    return peak - grads


@pytest.mark.parametrize("arch,checkpoint", [("hyena", True), ("hyena", False),
                                             pytest.param("mamba", True, marks=pytest.mark.slow)])
def test_estimate_matches_profiled_live_tensors(arch, checkpoint):
    """The activation model counts the tensors the code keeps: compare with the allocator's live bytes."""
    L = 1 << 12
    cfg = _cfg(arch, d_model=64, l_max=L, checkpoint_activations=checkpoint)
    est = sum(activation_bytes(cfg, seq_len=L, impl="torch"))
    measured = _profiled_peak(cfg, L)
    assert abs(est / measured - 1) <= 0.25, (est, measured)


def test_sp_degrees_respect_model_lengths_and_nodes():
    allowed, excluded = sp_degrees(_cfg("hyena", d_model=100), [1 << 20], gpus=16, gpus_per_node=8)
    assert allowed == [1, 2, 4] and "d_model=100" in excluded[8]
    allowed, excluded = sp_degrees(_cfg("mamba"), [15625, 1 << 20], gpus=8, gpus_per_node=8)
    assert allowed == [1] and "15625" in excluded[2]
    allowed, excluded = sp_degrees(_cfg("transformer", transformer=TransformerConfig(n_head=2)), [1 << 16], gpus=8,
                                   gpus_per_node=8)
    assert allowed == [1, 2] and "n_head=2" in excluded[4]
    allowed, _ = sp_degrees(_cfg("mamba"), [1 << 20], gpus=12, gpus_per_node=4)
    assert allowed == [1, 2, 4]  # an SP group never spans two nodes


def test_plan_fits_and_recommends_the_smallest_sp():
    cfg = _cfg("mamba", n_layer=12)
    kw = dict(stages=[(1 << 20, 1)], gpus=8, gpus_per_node=8, precision="bf16", reserve_gb=2.0)
    big = plan(cfg, gpu_mem_gb=80, **kw)
    rec = big["recommended"]
    assert rec.sp == 1 and not rec.checkpoint and rec.zero_stage == 1
    small = plan(cfg, gpu_mem_gb=12, **kw)
    rec = small["recommended"]
    assert rec is not None and rec.fits and rec.total <= 10e9
    assert not any(s.fits for s in small["settings"] if s.sp * s.tp < rec.sp * rec.tp)  # nothing smaller fits
    assert plan(cfg, gpu_mem_gb=0.5, **kw)["recommended"] is None
    with pytest.raises(ValueError, match="gpus-per-node"):
        plan(cfg, gpu_mem_gb=80, **{**kw, "gpus": 12})


def test_recommend_prefers_no_checkpointing_then_zero_1_2():
    def s(sp, zero, ckpt, fits=True):
        return Setting(sp, 8 // sp, zero, ckpt, 0, 0, 0, 0, 0, 0, fits)

    rows = [s(1, 0, True, False), s(2, 3, False), s(2, 0, False), s(2, 2, False), s(2, 1, True), s(4, 1, False)]
    assert recommend(rows) == s(2, 2, False)
    assert recommend([s(1, 3, True), s(1, 0, True)]) == s(1, 0, True)
    assert recommend([s(1, 1, True, False)]) is None


def test_cli_table_json_and_pick(capsys):
    args = ["--config", str(REPO / "configs" / "mamba_dna_1m.yaml"), "--gpus", "16", "--gpus-per-node", "8",
            "--gpu-mem-gb", "16"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "recommended: parallel.tensor=" in text and " parallel.sequence=" in text and "sp=16 excluded" not in text
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_params"] > 0 and out["seq_lens"][-1] == 1 << 20
    assert {s["sp"] for s in out["settings"]} == {1, 2, 4, 8}
    assert main(args + ["--json", "--zero-stage", "2"]) == 0
    assert {s["zero_stage"] for s in json.loads(capsys.readouterr().out)["settings"]} == {2}
    assert main(args + ["--pick"]) == 0
    assert int(capsys.readouterr().out) == out["recommended"]["sp"]
    assert main(args + ["--pick", "--tp", "2"]) == 2  # an SP degree alone would drop the TP degree
    assert "use --pick-args" in capsys.readouterr().err
    assert main(args[:-1] + ["0.5", "--pick"]) == 1
    assert "nothing fits" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["--gpus", "12", "--gpus-per-node", "8", "--gpu-mem-gb", "80"], "multiple of --gpus-per-node"),
    (["--gpus", "8", "--gpu-mem-gb", "-1"], "gpu-mem-gb must be > 0"),
    (["--gpus", "8", "--gpu-mem-gb", "80", "--seq-len", "5000000"], "outside"),
    (["--gpus", "8", "--gpu-mem-gb", "80", "model.d_modle=3"], "d_model"),
])
def test_cli_errors_say_what_to_change(extra, message, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--config", str(REPO / "configs" / "mamba_dna_1m.yaml"), *extra])
    assert err.value.code == 2
    assert message in capsys.readouterr().err


TP_CONFIGS = {"hyena": dict(d_model=64, l_max=256), "mamba": dict(d_model=64, l_max=256),
              "transformer": dict(d_model=64, l_max=256, transformer=TransformerConfig(n_head=4))}


def _count_tp_rank_parameters(payload):
    """(on each of 2 gloo processes) every config's model split by apply_tensor_parallel at TP = 2: the numbers of
    parameters each rank holds, gathered on every rank."""
    import torch.distributed as dist

    from parallel import ParallelDims, apply_tensor_parallel

    dims = ParallelDims(dp=1, tp=2).build()
    counts = {}
    for arch, cfg in payload.items():
        torch.manual_seed(0)
        model = apply_tensor_parallel(models.build_model(cfg), dims)
        mine = torch.tensor([sum(p.numel() for p in model.parameters())])
        both = [torch.zeros_like(mine) for _ in range(2)]
        dist.all_gather(both, mine)
        counts[arch] = [int(c) for c in both]
    return counts


@pytest.mark.distributed
def test_tp_parameter_memory_is_what_one_tp_rank_holds(tmp_path):
    """The planner's per-rank parameters at TP = 2 (counted on the meta device by parallel/tensor.py's rules)
    equal the parameters one rank of a real apply_tensor_parallel split holds, for each architecture; and the
    plan's per-rank weight bytes are those parameters (bf16: 2 bytes each, ZeRO 1 keeps weights whole)."""
    from tp_harness import spawn

    cfgs = {arch: _cfg(arch, **kw) for arch, kw in TP_CONFIGS.items()}
    real = spawn(_count_tp_rank_parameters, world=2, payload=cfgs, tmp=tmp_path)
    for arch, cfg in cfgs.items():
        whole = num_parameters(cfg)
        assert real[arch][0] == real[arch][1] < whole, (arch, real[arch], whole)
        assert tp_num_parameters(cfg, 2) == real[arch][0], arch
        assert tp_num_parameters(cfg, 1) == whole
        result = plan(cfg, stages=[(256, 1)], gpus=8, gpus_per_node=8, gpu_mem_gb=80, precision="bf16",
                      zero_stages=(1,), tp_degrees_=(1, 2))
        rows = {s.tp: s for s in result["settings"] if s.sp == 1 and not s.checkpoint}
        assert rows[2].params == 2 * real[arch][0] and rows[1].params == 2 * whole
        assert rows[2].optimizer == 12 * real[arch][0] / 4  # ZeRO over the dp x sp = 8 / 2 ranks of a TP shard


def test_tp_degrees_and_errors_for_non_divisible_tp(capsys):
    hyena = _cfg("hyena", d_model=100)  # 100 = 4 x 25: TP 8 does not divide it
    allowed, excluded = tp_degrees(hyena, gpus=16, gpus_per_node=8)
    assert allowed == [1, 2, 4] and "d_model=100 is not divisible by parallel.tensor=8" in excluded[8]
    allowed, excluded = tp_degrees(_cfg("mamba"), gpus=8, gpus_per_node=4)
    assert allowed == [1, 2, 4] and "a TP group stays in one node" in excluded[8]
    heads = _cfg("transformer", transformer=TransformerConfig(n_head=2))
    assert tp_degrees(heads, gpus=8, gpus_per_node=8)[0] == [1, 2]
    with pytest.raises(ValueError, match="d_model=100 is not divisible by parallel.tensor=8"):
        tp_num_parameters(hyena, 8)
    with pytest.raises(ValueError, match="parallel.tensor=3"):
        activation_bytes(_cfg("mamba"), seq_len=1024, tp=3)
    with pytest.raises(ValueError, match="d_model / parallel.tensor=25 is not divisible by parallel.sequence=2"):
        activation_bytes(hyena, seq_len=1024, tp=4, sp=2)
    with pytest.raises(ValueError, match="tensor-parallel degree 8 is not possible here"):
        plan(hyena, stages=[(1024, 1)], gpus=8, gpus_per_node=8, gpu_mem_gb=80, precision="bf16", tp_degrees_=(8,))
    # an SP x TP group stays in one node: at TP 4 on nodes of 8, SP goes up to 2
    allowed, excluded = sp_degrees(_cfg("mamba"), [1 << 20], gpus=16, gpus_per_node=8, tp=4)
    assert allowed == [1, 2] and 4 not in excluded  # 4 x 4 > 8 is not listed at all
    with pytest.raises(SystemExit) as err:
        main(["--config", str(REPO / "configs" / "hyenadna_large_1m.yaml"), "--gpus", "8", "--gpu-mem-gb", "80",
              "--tp", "8", "model.d_model=100"])
    assert err.value.code == 2
    assert "d_model=100 is not divisible by parallel.tensor=8" in capsys.readouterr().err


def test_tp_plan_lists_what_the_app_accepts_and_pick_args(capsys):
    cfg = _cfg("mamba", d_model=1024, n_layer=24)
    result = plan(cfg, stages=[(1 << 16, 1)], gpus=8, gpus_per_node=8, gpu_mem_gb=80, precision="bf16")
    assert {s.tp for s in result["settings"]} == {1, 2, 4, 8}
    # the app refuses ZeRO 0 in bf16 and ZeRO 3 with SP, at every TP degree
    for tp in (1, 2):
        assert {s.zero_stage for s in result["settings"] if s.tp == tp and s.sp == 1} == {1, 2, 3}
        assert {s.zero_stage for s in result["settings"] if s.tp == tp and s.sp > 1} == {1, 2}
    fp32 = plan(cfg, stages=[(1 << 16, 1)], gpus=8, gpus_per_node=8, gpu_mem_gb=80, precision="fp32")
    assert {s.zero_stage for s in fp32["settings"] if s.tp > 1 and s.sp == 1} == {0, 1, 2, 3}
    assert {s.zero_stage for s in fp32["settings"] if s.sp > 1} == {0, 1, 2}
    z3 = next(s for s in result["settings"] if (s.tp, s.sp, s.zero_stage, s.checkpoint) == (2, 1, 3, True))
    assert z3.params == 2 * tp_num_parameters(cfg, 2) / 4  # ZeRO 3 over the 4 ranks holding the same shard
    assert all(s.tp * s.sp * s.dp == 8 for s in result["settings"])
    # at the same tp x sp, TP's shards of the weights and of the mixer's channels take less than TP 1's
    t1 = next(s for s in result["settings"] if (s.tp, s.sp, s.zero_stage, s.checkpoint) == (1, 2, 1, True))
    t2 = next(s for s in result["settings"] if (s.tp, s.sp, s.zero_stage, s.checkpoint) == (2, 1, 1, True))
    assert t2.params < t1.params
    # tp x sp = 2 with checkpointing off fits, only at TP 2 here: the recommendation
    tight = plan(cfg, stages=[(1 << 18, 1)], gpus=8, gpus_per_node=8, gpu_mem_gb=80, precision="bf16")
    rec = tight["recommended"]
    cheaper = [s for s in tight["settings"] if s.fits and (s.tp * s.sp, s.checkpoint) < (rec.tp * rec.sp,
                                                                                           rec.checkpoint)]
    assert rec is not None and not cheaper
    args = ["--config", str(REPO / "configs" / "mamba_dna_1m.yaml"), "--gpus", "16", "--gpus-per-node", "8",
            "--gpu-mem-gb", "16"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(args + ["--pick-args"]) == 0
    rec = out["recommended"]
    assert capsys.readouterr().out.strip() == f"parallel.tensor={rec['tp']} parallel.sequence={rec['sp']}"
    assert main(args + ["--tp", "1", "--json"]) == 0
    assert {s["tp"] for s in json.loads(capsys.readouterr().out)["settings"]} == {1}


def test_tensor_parallel_bench_matches_todays_planner_and_formulas():
    """bench/results/tensor_parallel.json (TP 1, 2 x SP 1, 2 on gloo processes): every rank held the parameters
    today's planner counts for its TP degree, AdamW state of twice that, and started TP all-reduces and SP
    collectives of exactly the bytes of the formulas."""
    out = json.loads((REPO / "bench" / "results" / "tensor_parallel.json").read_text())
    m = out["model"]
    cfg = ModelConfig(arch=m["arch"], d_model=m["d_model"], n_layer=m["n_layer"], l_max=m["l_max"],
                      checkpoint_activations=m["checkpoint_activations"])
    ranks = out["ranks"]
    assert {(r["tp"], r["sp"]) for r in ranks} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    for r in ranks:
        assert "error" not in r
        assert r["param_bytes"] == 4 * tp_num_parameters(cfg, r["tp"]) == r["planner_param_bytes"]
        assert r["optimizer_bytes"] == 2 * r["param_bytes"] == r["planner_optimizer_bytes"]
        assert r["tp_bytes_per_layer"] == r["tp_bytes_per_layer_formula"]
        assert r["sp_bytes_layer0"] == r["sp_bytes_layer0_formula"]
        assert (r["tp_bytes_per_layer"]["forward"] > 0) == (r["tp"] > 1)


def _tp_profiled_peaks(payload):
    """(on each of 2 gloo processes) the live-tensor peak of one TP = 2 rank for each (config, L)."""
    from parallel import ParallelDims, apply_tensor_parallel

    dims = ParallelDims(dp=1, tp=2).build()
    torch.manual_seed(1)  # the same ids on both ranks
    return [_profiled_peak(cfg, L, lambda m: apply_tensor_parallel(m, dims)) for cfg, L in payload]


@pytest.mark.distributed
def test_tp_estimate_matches_profiled_live_tensors_of_one_tp_rank(tmp_path):
    """The TP terms (mixer inner channels and MLP hidden units 1/tp, residual stream, norms and head whole) against
    the allocator's live bytes on one rank of a real TP = 2 split, with and without checkpointing."""
    from tp_harness import spawn

    L = 1 << 12
    cfgs = [_cfg("hyena", d_model=64, l_max=L, checkpoint_activations=ckpt) for ckpt in (True, False)]
    measured = spawn(_tp_profiled_peaks, world=2, payload=[(c, L) for c in cfgs], tmp=tmp_path)
    for cfg, peak in zip(cfgs, measured):
        est = sum(activation_bytes(cfg, seq_len=L, impl="torch", tp=2))
        one = sum(activation_bytes(cfg, seq_len=L, impl="torch"))
        assert abs(est / peak - 1) <= 0.25, (cfg.checkpoint_activations, est, peak)
        assert est < one

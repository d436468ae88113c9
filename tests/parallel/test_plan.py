"""parallel.plan: ZeRO arithmetic, the activation model against measured peaks, SP choices, the CLI and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import models
from models.config import ModelConfig, TransformerConfig
from parallel.plan import Setting, activation_bytes, main, num_parameters, plan, recommend, sp_degrees, state_bytes

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


def _profiled_peak(cfg: ModelConfig, L: int) -> int:
    """Peak bytes of live tensors during one forward + backward (the profiler's allocation events)."""
    from torch.profiler import profile

    torch.manual_seed(0)
    model = models.build_model(cfg)
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
    assert not any(s.fits for s in small["settings"] if s.sp < rec.sp)  # nothing smaller fits
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
    assert "recommended: parallel.sequence=" in text and "sp=16 excluded" not in text
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_params"] > 0 and out["seq_lens"][-1] == 1 << 20
    assert {s["sp"] for s in out["settings"]} == {1, 2, 4, 8}
    assert main(args + ["--json", "--zero-stage", "2"]) == 0
    assert {s["zero_stage"] for s in json.loads(capsys.readouterr().out)["settings"]} == {2}
    assert main(args + ["--pick"]) == 0
    assert int(capsys.readouterr().out) == out["recommended"]["sp"]
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

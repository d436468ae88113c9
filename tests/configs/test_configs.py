"""Every shipped config loads through the schema, and each recipe says what it claims."""

from pathlib import Path

import pytest

import models
from pretrain.args import resolve
from pretrain.schedule import batch_split

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL = sorted(p for p in CONFIGS.rglob("*.yaml") if "finetune" not in p.relative_to(CONFIGS).parts)  # pretraining


def _params(cfg) -> int:
    model_cfg = cfg.model
    model_cfg.l_max = min(model_cfg.l_max, 4096)  # parameters do not depend on l_max; keep the filters small
    return models.build_model(model_cfg).num_parameters()


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_resolves_and_splits_its_batches(path):
    cfg = resolve(path, [])
    for dp in (1, 2, 8):
        for seq_len in cfg.train.seq_lens():
            mb, ga = batch_split(tokens_per_step=cfg.train.tokens_per_step, seq_len=seq_len, dp=dp,
                                 micro_batch_tokens=cfg.train.micro_batch_tokens)
            assert mb * ga * dp * seq_len == cfg.train.tokens_per_step


def test_released_hyenadna_recipes():
    tiny = resolve(CONFIGS / "hyenadna_tiny_1k.yaml", [])
    t = tiny.train
    assert (t.lr, t.betas, t.weight_decay, t.grad_clip, t.lr_warmup_fraction) == (6e-4, [0.9, 0.999], 0.1, 1.0, 0.01)
    assert t.tokens_per_step == 256 * 1024 and t.lr_schedule == "cosine"
    assert _params(tiny) == 436_096
    large = resolve(CONFIGS / "hyenadna_large_1m.yaml", [])
    assert (large.model.d_model, large.model.n_layer, large.model.l_max) == (256, 8, 1_000_002)
    assert large.model.checkpoint_activations and large.train.seq_len == 1_000_000
    assert _params(large) == 6_550_528


def test_mamba_context_scaling_recipe():
    cfg = resolve(CONFIGS / "mamba_dna_1m.yaml", [])
    assert (cfg.model.arch, cfg.model.d_model, cfg.model.n_layer) == ("mamba", 128, 12)
    assert cfg.train.tokens_per_step == 2**24 and cfg.train.seq_lens() == [2**k for k in range(10, 21)]
    assert all(s.epochs == 2 for s in cfg.train.warmup_stages)
    assert (cfg.train.lr, cfg.train.betas, cfg.train.weight_decay, cfg.train.lr_warmup_fraction) == \
        (8e-3, [0.9, 0.95], 0.1, 0.1)


def test_demo_switches_architecture_from_the_command_line():
    for arch in ("hyena", "mamba", "transformer"):
        cfg = resolve(CONFIGS / "demo_cpu.yaml", [f"model.arch={arch}"])
        assert 100_000 < _params(cfg) < 600_000


def test_scaling_sweep_widths_and_mamba_blocks():
    sweep = {}
    for path in sorted((CONFIGS / "scaling").glob("*.yaml")):
        cfg = resolve(path, [])
        assert cfg.train.seq_len == 1024
        sweep[(cfg.model.arch, cfg.model.d_model)] = (cfg.model.n_layer, _params(cfg))
    widths = [64, 128, 256, 512]
    assert sorted(sweep) == sorted((a, w) for a in ("hyena", "mamba", "transformer") for w in widths)
    for w in widths:
        assert sweep[("mamba", w)][0] == 2 * sweep[("hyena", w)][0] == 2 * sweep[("transformer", w)][0]
        counts = [sweep[(a, w)][1] for a in ("hyena", "mamba", "transformer")]
        assert max(counts) / min(counts) < 1.25  # comparable sizes at each width
    for arch in ("hyena", "mamba", "transformer"):
        sizes = [sweep[(arch, w)][1] for w in widths]
        assert sizes == sorted(sizes)


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_window_length_splits_over_the_sequence_parallel_degrees_of_a_node(path):
    """No SP degree that ``parallel.plan`` may pick on nodes of 8 GPUs (what ``slurm/pretrain_1m.sh`` passes as
    ``parallel.sequence``) is ruled out by a window length, warm-up stages included: each one splits evenly."""
    from parallel import check_sequence_parallel
    from parallel.plan import sp_degrees

    cfg = resolve(path, [])
    lens = cfg.train.seq_lens()
    allowed, excluded = sp_degrees(cfg.model, lens, gpus=32, gpus_per_node=8)
    assert not {sp: why for sp, why in excluded.items() if "window length" in why}
    for sp in allowed:
        check_sequence_parallel(cfg.model, sp, lens)


@pytest.mark.parametrize("name,arch", [("hyena_1b_1m", "hyena"), ("mamba_1b_1m", "mamba")])
def test_1b_configs_have_1b_parameters_and_fit_64_gpus_of_80_gb(name, arch, capsys):
    """The 1B configs: 0.9-1.2 B parameters (the model built on the meta device: exact, no memory), 2^20 windows,
    and the planner finds a setting that fits 8 nodes x 8 GPUs of 80 GB; the config's ZeRO stage and
    checkpointing are the ones it recommends (the SLURM script passes its TP and SP degrees)."""
    import json

    from parallel.plan import main, num_parameters

    cfg = resolve(CONFIGS / f"{name}.yaml", [])
    assert cfg.model.arch == arch and cfg.model.l_max == cfg.train.seq_len == 1 << 20
    assert 0.9e9 <= num_parameters(cfg.model) <= 1.2e9
    assert main(["--config", str(CONFIGS / f"{name}.yaml"), "--gpus", "64", "--gpus-per-node", "8",
                 "--gpu-mem-gb", "80", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rec = out["recommended"]
    assert rec is not None and rec["fits"] and rec["total"] + 2e9 <= 80e9
    assert rec["tp"] * rec["sp"] * rec["dp"] == 64 and out["num_params"] == num_parameters(cfg.model)
    assert (rec["zero_stage"], rec["checkpoint"]) == (cfg.parallel.zero_stage, cfg.model.checkpoint_activations)

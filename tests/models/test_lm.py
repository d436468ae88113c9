"""models.lm: shapes, causality, input checks, init, weight-decay tags, checkpointing, save/load, precision."""

import math

import pytest
import torch
import torch.nn.functional as F

import models
from models.attention import apply_rope, rope_angles
from models.lm import DNALM

SMALL = {
    "hyena": {"arch": "hyena", "d_model": 32, "n_layer": 2, "l_max": 256},
    "mamba": {"arch": "mamba", "d_model": 32, "n_layer": 2, "l_max": 256},
    "transformer": {"arch": "transformer", "d_model": 32, "n_layer": 2, "l_max": 256, "transformer": {"n_head": 4}},
}
ARCHS = list(SMALL)


def _ids(B=2, L=50, seed=0):
    return torch.randint(7, 12, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_shape_dtype_and_causality(arch):
    torch.manual_seed(0)
    model = models.build_model(SMALL[arch]).double().eval()
    ids = _ids(L=41)
    logits = model(ids)
    assert logits.shape == (2, 41, 16) and logits.dtype == torch.float64
    ids2 = ids.clone()
    ids2[:, 30:] = 7 + (ids2[:, 30:] - 6) % 5  # change every future token
    logits2 = model(ids2)
    assert (logits2[:, :30] - logits[:, :30]).abs().max() < 1e-10
    assert (logits2[:, 30:] - logits[:, 30:]).abs().max() > 1e-6
    assert (model(ids[:1, :1]) - logits[:1, :1]).abs().max() < 1e-10  # L = 1 works and agrees


@pytest.mark.parametrize("arch", ARCHS)
def test_bad_input_ids_raise_value_error(arch):
    model = models.build_model(SMALL[arch])
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 12\).*\[7, 12\]"):
        model(torch.tensor([[7, 12]]))
    with pytest.raises(ValueError, match=r"\[-1, 7\]"):
        model(torch.tensor([[7, -1]]))
    with pytest.raises(ValueError, match=r"sequence length 257 is outside \[1, model.l_max=256\]"):
        model(_ids(1, 257))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="integer tensor of shape"):
        model(torch.tensor([7, 8]))


def test_build_model_rejects_bad_config():
    with pytest.raises(ValueError, match="model.n_layer must be >= 1"):
        models.build_model({"n_layer": 0})
    with pytest.raises(ValueError, match=r"unknown key 'model.d_mdoel': did you mean 'model.d_model'"):
        models.build_model({"d_mdoel": 8})
    with pytest.raises(ValueError, match="ModelConfig or a dict"):
        models.build_model("hyena")


def _tagged(model):
    return {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}


def test_no_weight_decay_tags_hyena():
    tagged = _tagged(models.build_model(SMALL["hyena"]))
    mixer = "layers.0.mixer."
    for name in ("filter_fn.implicit_filter.0.weight", "filter_fn.implicit_filter.1.freq",
                 "filter_fn.implicit_filter.6.weight", "filter_fn.bias", "in_proj.bias", "short_filter.bias"):
        assert mixer + name in tagged
    assert {"layers.0.norm1.weight", "layers.0.norm1.bias", "norm_f.weight", "layers.1.mlp.fc1.bias"} <= tagged
    for name in ("layers.0.mixer.in_proj.weight", "layers.0.mixer.short_filter.weight", "embedding.weight",
                 "layers.0.mlp.fc1.weight"):
        assert name not in tagged


def test_no_weight_decay_tags_mamba_and_transformer():
    tagged = _tagged(models.build_model(SMALL["mamba"]))
    assert {"layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.dt_proj.bias", "layers.0.mixer.conv1d.bias",
            "layers.0.norm1.weight", "norm_f.weight"} <= tagged
    assert not tagged & {"layers.0.mixer.in_proj.weight", "layers.0.mixer.dt_proj.weight", "embedding.weight"}
    tagged = _tagged(models.build_model(SMALL["transformer"]))
    assert tagged == {"layers.0.norm1.weight", "layers.0.norm2.weight", "layers.1.norm1.weight",
                      "layers.1.norm2.weight", "norm_f.weight"}


def test_init_follows_the_references():
    torch.manual_seed(0)
    h = models.build_model({"arch": "hyena", "d_model": 256, "n_layer": 4, "l_max": 64})
    mixer = h.layers[0].mixer
    assert abs(mixer.in_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(mixer.filter_fn.implicit_filter[2].weight.std().item() - 0.02) < 2e-3  # filter MLP redrawn too
    assert abs(mixer.out_proj.weight.std().item() - 0.02 / math.sqrt(8)) < 5e-4
    assert abs(h.layers[0].mlp.fc2.weight.std().item() - 0.02 / math.sqrt(8)) < 5e-4
    assert mixer.in_proj.bias.abs().max() == 0 and torch.all(mixer.filter_fn.implicit_filter[1].freq == 10)
    assert abs(mixer.filter_fn.bias.std().item() - 1.0) < 0.3  # D ~ N(0, 1)
    assert h.lm_head.weight is h.embedding.weight
    m = models.build_model({"arch": "mamba", "d_model": 256, "n_layer": 4})
    mixer = m.layers[0].mixer
    assert torch.equal(mixer.A_log, torch.log(torch.arange(1, 17.0)).repeat(512, 1)) and torch.all(mixer.D == 1)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)
    bound = 1 / math.sqrt(512) / math.sqrt(4)  # kaiming-uniform(a=sqrt 5) bound, rescaled by 1/sqrt(n_layer)
    assert mixer.out_proj.weight.abs().max() <= bound and mixer.out_proj.weight.abs().max() > 0.9 * bound
    assert abs(mixer.dt_proj.weight.abs().max().item() - 16 ** -0.5) < 0.01  # U(+-dt_rank^-0.5), dt_rank 16


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_checkpointing_gives_identical_gradients(arch):
    torch.manual_seed(0)
    plain = models.build_model(SMALL[arch]).double()
    ckpt = models.build_model({**SMALL[arch], "checkpoint_activations": True}).double()
    ckpt.load_state_dict(plain.state_dict())
    ids = _ids(L=33)
    grads = []
    for model in (plain, ckpt):
        logits = model(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, 16), ids[:, 1:].reshape(-1)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_checkpointing_keeps_only_block_inputs(arch):
    """Checkpointed, autograd keeps nothing wider than the residual stream / logits: every mixer and MLP
    intermediate ((B, L, 3d) projections, the (B, L, 4d) MLP hidden, Mamba's (B, L, 2·Di)) is recomputed."""
    ids = _ids(L=64)
    widest = {}
    for ckpt in (False, True):
        model = models.build_model({**SMALL[arch], "checkpoint_activations": ckpt})
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids).sum()
        widest[ckpt] = max(saved)
    B, L, d, vocab = *ids.shape, 32, 16
    assert widest[True] <= B * L * max(d, vocab) < widest[False]


@pytest.mark.parametrize("arch", ARCHS)
def test_save_and_load_round_trip(arch, tmp_path):
    model = models.build_model(SMALL[arch]).eval()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = models.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config and loaded.lm_head.weight is loaded.embedding.weight
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="config.json not found"):
        models.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"d_model": 128, "layer": {}}')
    (tmp_path / "weights.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="python -m models.convert hyenadna"):
        models.from_pretrained(tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_model_keeps_a_float32_residual_stream(arch):
    torch.manual_seed(0)
    model = models.build_model(SMALL[arch]).eval()
    ids = _ids()
    with torch.no_grad():
        ref = model(ids)
        seen = []
        hook = model.layers[1].register_forward_hook(lambda m, args, out: seen.append((args[0].dtype, out.dtype)))
        low = model.to(torch.bfloat16)(ids)
        hook.remove()
    assert seen == [(torch.float32, torch.float32)] and low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_inputs_embeds_path_matches_ids():
    model = models.build_model(SMALL["hyena"]).eval()
    ids = _ids()
    with torch.no_grad():
        a = model.hidden_states(ids)
        b = model.hidden_states(inputs_embeds=model.embedding(ids))
    assert torch.equal(a, b) and a.shape == (2, 50, 32)
    with pytest.raises(ValueError, match="exactly one"):
        model.hidden_states()


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    cos, sin = rope_angles(64, 8, 10000.0, "cpu", torch.float64)

    def score(p, r):
        return (apply_rope(q, cos[p:p + 1], sin[p:p + 1]) * apply_rope(k, cos[r:r + 1], sin[r:r + 1])).sum()

    assert abs(score(10, 3) - score(50, 43)) < 1e-12 and abs(score(10, 3) - score(10, 4)) > 1e-6
    assert torch.allclose(apply_rope(q, cos[:1], sin[:1]), q)  # position 0 is the identity


def test_lazy_package_exports():
    assert models.DNALM is DNALM and callable(models.from_pretrained)
    with pytest.raises(AttributeError):
        models.nothing_here


def test_checkpoint_auto_is_the_default_and_follows_the_activation_budget():
    cfg = models.build_model({"arch": "hyena", "d_model": 128, "n_layer": 2}).config
    assert cfg.checkpoint == "auto" and cfg.checkpoint_activations is None
    per_token = cfg.activation_bytes(1, 1)
    assert per_token == 16 * 128 * 2 * 4  # models.config.ACTIVATION_FLOATS['hyena']
    threshold = int(cfg.checkpoint_budget_gb * 2**30 // per_token)  # longest batch-1 window kept in memory
    assert threshold == 1 << 19 and not cfg.use_checkpoint(1, 1024) and not cfg.use_checkpoint(1, threshold)
    assert cfg.use_checkpoint(1, threshold + 1) and cfg.use_checkpoint(2, threshold // 2 + 1)
    assert cfg.use_checkpoint(1, 1 << 20)
    small = models.build_model({"arch": "hyena", "d_model": 128, "n_layer": 2, "checkpoint_budget_gb": 0.001})
    assert small.config.use_checkpoint(1, 1024)
    for mode, expected in ((True, True), (False, False)):
        c = models.build_model({"arch": "mamba", "d_model": 32, "checkpoint": mode}).config
        assert c.use_checkpoint(1, 8) is expected and c.use_checkpoint(1, 1 << 24) is expected
    legacy = models.build_model({"arch": "hyena", "d_model": 32, "checkpoint_activations": True}).config
    assert legacy.checkpoint_mode is True and legacy.use_checkpoint(1, 8)  # the former key still reads
    with pytest.raises(ValueError, match="checkpoint_activations"):
        models.build_model({"arch": "hyena", "checkpoint": False, "checkpoint_activations": True})
    with pytest.raises(ValueError, match="checkpoint_budget_gb must be > 0"):
        models.build_model({"checkpoint_budget_gb": 0})
    with pytest.raises(ValueError, match="model.checkpoint"):
        models.build_model({"checkpoint": "sometimes"})


@pytest.mark.parametrize("arch", ["hyena", "mamba"])
def test_checkpoint_auto_decides_per_call_from_the_input_length(arch):
    """Under ``auto`` the same model runs short windows plainly and long ones checkpointed, same gradients."""
    torch.manual_seed(0)
    per_token = models.build_model(SMALL[arch]).config.activation_bytes(1, 1, itemsize=8)  # float64 model
    budget = per_token * 40.5 / 2**30  # windows longer than 40 tokens are checkpointed
    plain = models.build_model({**SMALL[arch], "checkpoint": False}).double()
    auto = models.build_model({**SMALL[arch], "checkpoint_budget_gb": budget}).double()
    auto.load_state_dict(plain.state_dict())
    assert not auto.layers[0].use_checkpoint(1, 40) and auto.layers[0].use_checkpoint(1, 41)
    for L in (33, 64):
        ids = _ids(B=1, L=L)
        grads = []
        for model in (plain, auto):
            model.zero_grad(set_to_none=True)
            logits = model(ids)
            F.cross_entropy(logits[0, :-1], ids[0, 1:]).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        for name, g in grads[0].items():
            assert torch.allclose(grads[1][name], g, rtol=1e-12, atol=1e-14), (L, name)

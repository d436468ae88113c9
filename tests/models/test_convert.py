"""models.convert: config mapping, released parameter counts, and refusal of anything it cannot import."""

import json
import shutil

import pytest
import torch

from models.convert import convert_hyenadna, convert_mamba_ssm, hyenadna_config, main, mamba_ssm_config
from models.lm import DNALM

RELEASED_LAYER = {"_name_": "hyena", "emb_dim": 5, "filter_order": 64, "local_order": 3, "modulate": True, "w": 10,
                  "lr": 6e-4, "wd": 0.0, "lr_pos_emb": 0.0}


def released(d_model, n_layer, l_max):
    """A config.json of a released LongSafari/hyenadna-*-seqlen checkpoint."""
    return {"d_model": d_model, "n_layer": n_layer, "d_inner": 4 * d_model, "vocab_size": 12, "resid_dropout": 0.0,
            "embed_dropout": 0.1, "fused_mlp": False, "fused_dropout_add_ln": True, "residual_in_fp32": True,
            "pad_vocab_size_multiple": 8, "return_hidden_state": True, "checkpoint_mixer": False,
            "checkpoint_mlp": False, "layer": {**RELEASED_LAYER, "l_max": l_max}}


@pytest.mark.parametrize("name,d_model,n_layer,l_max,count", [
    ("tiny-1k", 128, 2, 1026, 436_096),
    ("tiny-1k-d256", 256, 2, 1026, 1_641_088),
    ("small-32k", 256, 4, 32_770, 3_277_568),
    ("medium-160k", 256, 8, 160_002, 6_550_528),
    ("medium-450k", 256, 8, 450_002, 6_550_528),
    ("large-1m", 256, 8, 1_000_002, 6_550_528),
])
def test_released_hyenadna_parameter_counts(name, d_model, n_layer, l_max, count):
    cfg = hyenadna_config(released(d_model, n_layer, l_max))
    assert cfg.l_max == l_max and cfg.hyena.shift == 0.0 and cfg.mlp_width == 4 * d_model
    with torch.device("meta"):
        model = DNALM(cfg)
    assert model.num_parameters() == count, name


def test_mamba_config_mapping():
    cfg = mamba_ssm_config({"d_model": 64, "n_layer": 2, "vocab_size": 12, "ssm_cfg": {"d_state": 8, "dt_rank": "auto"},
                            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
                            "pad_vocab_size_multiple": 8, "tie_embeddings": True}, l_max=4096)
    assert (cfg.arch, cfg.mamba.d_state, cfg.mamba.dt_rank, cfg.dt_rank, cfg.mlp_width, cfg.l_max) == \
        ("mamba", 8, None, 4, 0, 4096)


@pytest.mark.parametrize("change,match", [
    (lambda c: c["layer"].update(order=3), "layer.order=3 is not supported"),
    (lambda c: c["layer"].update(_name_="hyena-h3"), "only 'hyena' layers"),
    (lambda c: c["layer"].update(filter_dropout=0.1), "layer.filter_dropout=0.1 is not supported"),
    (lambda c: c["layer"].update(mystery=1), r"unsupported keys \['mystery'\]"),
    (lambda c: c.update(attn_layer_idx=[1]), "attention layers"),
    (lambda c: c.update(surprise=True), r"unsupported keys \['surprise'\]"),
    (lambda c: c["layer"].update(emb_dim=4), "model.hyena.emb_dim must be an odd integer"),
])
def test_hyenadna_config_refusals(change, match):
    cfg = released(128, 2, 1026)
    change(cfg)
    with pytest.raises(ValueError, match=match):
        hyenadna_config(cfg)


@pytest.mark.parametrize("change,match", [
    ({"ssm_cfg": {"layer": "Mamba2"}}, "only Mamba1"),
    ({"attn_layer_idx": [0]}, "attention layers"),
    ({"rms_norm": False}, "rms_norm=false"),
    ({"tie_embeddings": False}, "tie_embeddings=false"),
    ({"ssm_cfg": {"headdim": 64}}, r"unsupported keys \['headdim'\]"),
])
def test_mamba_config_refusals(change, match):
    with pytest.raises(ValueError, match=match):
        mamba_ssm_config({"d_model": 64, "n_layer": 2, **change})


def _copy(golden, arch, tmp_path):
    dst = tmp_path / arch
    shutil.copytree(golden / arch, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return dst


def test_hyenadna_weight_refusals(golden, tmp_path):
    src = _copy(golden, "hyena", tmp_path)
    state = torch.load(src / "weights.ckpt", weights_only=True)["state_dict"]

    def attempt(new_state, match):
        torch.save({"state_dict": new_state}, src / "weights.ckpt")
        with pytest.raises(ValueError, match=match):
            convert_hyenadna(src)

    attempt({**state, "model.backbone.extra.weight": torch.zeros(2)}, "not recognised.*backbone.extra.weight")
    attempt({k: v for k, v in state.items() if "fc2.bias" not in k}, "missing.*layers.0.mlp.fc2.bias")
    attempt({**state, "model.lm_head.weight": torch.zeros(16, 128)}, "tied/shared")
    freq = "model.backbone.layers.0.mixer.filter_fn.implicit_filter.3.freq"
    attempt({**state, freq: state[freq] + 1}, "tied/shared")
    cfg = json.loads((src / "config.json").read_text())
    cfg["layer"]["l_max"] = 2050
    (src / "config.json").write_text(json.dumps(cfg))
    attempt(state, "pos_emb.z .* differs from the one rebuilt.*l_max")


def test_mamba_weight_refusals_and_cli_errors(golden, tmp_path, capsys):
    src = _copy(golden, "mamba", tmp_path)
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    torch.save({k: v for k, v in state.items() if not k.endswith("layers.1.mixer.D")}, src / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"missing.*layers.1.mixer.D"):
        convert_mamba_ssm(src)
    torch.save({"weights": state, "note": object()}, src / "pytorch_model.bin")
    with pytest.raises(SystemExit) as exit_info:
        main(["mamba_ssm", str(src), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "--trust-pickle" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["hyenadna", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    assert "config.json not found" in capsys.readouterr().err

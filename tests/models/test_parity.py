"""Converted reference checkpoints reproduce the reference logits, loss and gradients (data/sample/golden)."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from models import from_pretrained
from models.convert import convert_hyenadna, convert_mamba_ssm, hyenadna_key, main, mamba_ssm_key



CASES = {"hyena": (convert_hyenadna, hyenadna_key), "mamba": (convert_mamba_ssm, mamba_ssm_key)}


def _golden(golden, arch):
    ids = torch.load(golden / arch / "inputs.pt", weights_only=True)["input_ids"]
    return ids, torch.load(golden / arch / "outputs.pt", weights_only=True)


def _loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


@pytest.mark.parametrize("arch", ["hyena", "mamba"])
def test_float64_logits_loss_and_grads(golden, arch, tmp_path):
    convert, key = CASES[arch]
    convert(golden / arch).save_pretrained(tmp_path)
    model = from_pretrained(tmp_path).double().eval()
    ids, ref = _golden(golden, arch)
    logits = model(ids)
    loss = _loss(logits, ids)
    loss.backward()
    assert logits.dtype == torch.float64
    assert (logits - ref["logits"]).abs().max() <= 1e-8
    assert abs(loss.item() - ref["loss"].item()) <= 1e-10
    params = dict(model.named_parameters())
    assert len(ref["grads"]) >= 6
    for name, g in ref["grads"].items():
        ours = params[key(name)].grad
        assert ((ours - g).abs().max() / g.abs().max()).item() <= 1e-10, name


@pytest.mark.parametrize("arch", ["hyena", "mamba"])
def test_float32_logits(golden, arch):
    model = CASES[arch][0](golden / arch).eval()
    ids, ref = _golden(golden, arch)
    with torch.no_grad():
        logits = model(ids)
    assert logits.dtype == torch.float32
    assert (logits.double() - ref["logits"]).abs().max() <= 1e-4
    assert (logits - ref["logits_fp32"]).abs().max() <= 1e-5
    assert abs(_loss(logits, ids).item() - ref["loss_fp32"].item()) <= 1e-5


def test_filter_shift_is_used(golden):
    ids, ref = _golden(golden, "hyena")
    with torch.no_grad():
        shifted = convert_hyenadna(golden / "hyena", filter_shift=0.05).double()(ids)
    assert (shifted - ref["logits"]).abs().max() > 1e-2  # the goldens were made with shift 0.0


def test_checkpointed_key_variant_and_cli(golden, tmp_path):
    """Keys written with gradient checkpointing (`.mixer.layer.`, `.mlp.layer.`) convert to the same model."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(golden / "hyena" / "config.json", src / "config.json")
    state = torch.load(golden / "hyena" / "weights.ckpt", weights_only=True)["state_dict"]
    renamed = {k.replace(".mixer.", ".mixer.layer.").replace(".mlp.", ".mlp.layer."): v for k, v in state.items()}
    torch.save({"state_dict": renamed}, src / "weights.ckpt")
    assert main(["hyenadna", str(src), "--out", str(tmp_path / "out")]) == 0
    ids, ref = _golden(golden, "hyena")
    with torch.no_grad():
        logits = from_pretrained(tmp_path / "out").double().eval()(ids)
    assert (logits - ref["logits"]).abs().max() <= 1e-8

"""bench/reference_{hyena,mamba}.py, the baselines of bench/cpu_speed.py, equal our models on the golden weights.

float64, 1e-10: the stand-ins load the reference checkpoints as released (no conversion); our models load them
through ``models.convert``. Both are also held to the stored golden outputs, so neither can drift with the other.
"""

import pytest
import torch
import torch.nn.functional as F

from bench import reference_hyena, reference_mamba
from models.convert import convert_hyenadna, convert_mamba_ssm, hyenadna_key, mamba_ssm_key

CASES = {"hyena": (reference_hyena, convert_hyenadna, hyenadna_key),
         "mamba": (reference_mamba, convert_mamba_ssm, mamba_ssm_key)}


def _loss(logits, ids):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _run(model, ids):
    model.zero_grad(set_to_none=True)
    logits = model(ids)
    loss = _loss(logits, ids)
    loss.backward()
    return logits.detach(), loss.item(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["hyena", "mamba"])
def test_standin_equals_longdna_and_golden_float64(golden, arch):
    ref_mod, convert, key = CASES[arch]
    ids = torch.load(golden / arch / "inputs.pt", weights_only=True)["input_ids"]
    stored = torch.load(golden / arch / "outputs.pt", weights_only=True)
    standin = ref_mod.from_golden(golden / arch, residual_in_fp32=False).double()  # the goldens' float64 setting
    ours = convert(golden / arch).double().eval()  # eval: the released config has embed_dropout 0.1
    s_logits, s_loss, s_grads = _run(standin, ids)
    o_logits, o_loss, o_grads = _run(ours, ids)
    assert (s_logits - o_logits).abs().max() <= 1e-10
    assert abs(s_loss - o_loss) <= 1e-10
    assert (s_logits - stored["logits"]).abs().max() <= 1e-10
    assert abs(s_loss - stored["loss"].item()) <= 1e-10
    compared = 0
    for name, g in s_grads.items():  # every parameter of the stand-in (the tied / shared ones once)
        mine = o_grads[key(name)]
        assert ((g - mine).abs().max() / mine.abs().max()).item() <= 1e-10, name
        compared += 1
    assert compared >= 10
    for name, g in stored["grads"].items():
        assert ((s_grads[name] - g).abs().max() / g.abs().max()).item() <= 1e-10, name


@pytest.mark.parametrize("arch", ["hyena", "mamba"])
def test_standin_float32_matches_golden(golden, arch):
    ids = torch.load(golden / arch / "inputs.pt", weights_only=True)["input_ids"]
    stored = torch.load(golden / arch / "outputs.pt", weights_only=True)
    with torch.no_grad():
        logits = CASES[arch][0].from_golden(golden / arch)(ids)
    assert logits.dtype == torch.float32
    assert (logits - stored["logits_fp32"]).abs().max() <= 1e-5


def test_standin_block_equals_ours_at_a_longer_length():
    """One Hyena block at L = 4096 (longer than the golden 1024, FFT of size 8192): same output and gradients."""
    import models

    torch.manual_seed(0)
    ours = models.build_model({"arch": "hyena", "d_model": 16, "n_layer": 1, "l_max": 4096}).double()
    standin = reference_hyena.ConvLMHeadModel(d_model=16, n_layer=1, l_max=4096, residual_in_fp32=False).double()
    state = {k: v for k, v in standin.state_dict().items()}
    mapped = {hyenadna_key(k): k for k in state}
    ours_state = ours.state_dict()
    with torch.no_grad():  # copy our random weights into the stand-in
        for ok, sk in mapped.items():
            if ok in ours_state:
                state[sk].copy_(ours_state[ok])
    ids = torch.randint(7, 12, (1, 4096), generator=torch.Generator().manual_seed(1))
    s_logits, _, s_grads = _run(standin, ids)
    o_logits, _, o_grads = _run(ours, ids)
    assert (s_logits - o_logits).abs().max() <= 1e-10
    for name, g in s_grads.items():
        mine = o_grads[hyenadna_key(name)]
        assert ((g - mine).abs().max() / mine.abs().max()).item() <= 1e-10, name

"""The long-window backward paths (channel groups in Hyena's fused long conv, token chunks in the GELU MLP)
give the gradients of the one-piece backward (float64)."""

import torch

import models
import models.hyena as hyena
import models.layers as layers


def _grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(ids).square().mean().backward()
    return [p.grad.clone() for p in model.parameters()]


def _rel(a, b):
    return max(((x - y).abs().max() / x.abs().max()).item() for x, y in zip(a, b))


def test_grouped_and_chunked_backward_match_one_piece(monkeypatch):
    torch.manual_seed(0)
    model = models.build_model({"arch": "hyena", "d_model": 32, "n_layer": 2, "l_max": 300,
                                "checkpoint": False}).double()
    ids = torch.randint(7, 11, (2, 300))
    whole = _grads(model, ids)
    assert len(hyena._backward_groups(2, 32, 300)) == 1 and 2 * 300 <= layers.MLP_BACKWARD_CHUNK_ELEMENTS // 128
    monkeypatch.setattr(hyena, "BACKWARD_GROUP_ELEMENTS", 2 * 301 * 5)  # 5 channels per group: 7 groups
    assert len(hyena._backward_groups(2, 32, 300)) == 7
    grouped = _grads(model, ids)
    assert _rel(whole, grouped) < 1e-13
    monkeypatch.setattr(layers, "MLP_BACKWARD_CHUNK_ELEMENTS", 128 * 70)  # 70 tokens per chunk (hidden 128)
    chunked = _grads(model, ids)
    assert _rel(whole, chunked) < 1e-13
    assert _rel(whole, [2 * g for g in chunked]) > 0.1  # the comparison can fail

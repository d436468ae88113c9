"""Classification metrics against hand-computed values; pooling ignores padding; the optimizer sees only what
a tuning mode trains."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from finetune.metrics import classification_metrics, majority_accuracy
from finetune.model import SequenceClassifier, pool
from models import build_model


def test_binary_metrics_match_the_textbook_formulas():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    p = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])  # tp 3, fn 1, fp 1, tn 5
    m = classification_metrics(y, p, ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["mcc"] == pytest.approx((3 * 5 - 1 * 1) / math.sqrt(4 * 4 * 6 * 6))
    assert m["f1_pos"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert m["f1_neg"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    assert majority_accuracy(y, 2) == pytest.approx(0.6)


def test_multiclass_mcc_is_one_for_perfect_and_zero_for_a_constant_prediction():
    y = np.array([0, 1, 2, 2, 1, 0])
    assert classification_metrics(y, y, ["a", "b", "c"])["mcc"] == pytest.approx(1.0)
    assert classification_metrics(y, np.zeros_like(y), ["a", "b", "c"])["mcc"] == 0.0


def test_mean_pooling_ignores_padding_and_last_takes_the_last_real_position():
    h = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[False, True, True, True], [True, True, False, False]])
    assert torch.equal(pool(h, mask, "mean")[0], h[0, 1:].mean(0))
    assert torch.equal(pool(h, mask, "mean")[1], h[1, :2].mean(0))
    assert torch.equal(pool(h, mask, "last"), torch.stack([h[0, 3], h[1, 1]]))


@pytest.mark.parametrize("mode, prompts, trainable", [
    ("full", 0, None), ("frozen", 0, {"head.weight", "head.bias"}),
    ("soft_prompt", 4, {"prompt", "head.weight", "head.bias"})])
def test_a_tuning_mode_leaves_only_its_parameters_trainable(mode, prompts, trainable):
    model = SequenceClassifier(build_model(dict(d_model=16, n_layer=1, l_max=64)), 3, mode=mode, num_prompts=prompts)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == (trainable or {n for n, _ in model.named_parameters()})
    ids = torch.randint(7, 11, (2, 20))
    assert model(ids, torch.ones_like(ids, dtype=torch.bool)).shape == (2, 3)

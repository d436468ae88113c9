"""``models.config.ACTIVATION_FLOATS['hyena']`` (what ``checkpoint: auto`` budgets with) against a count of what
autograd actually keeps in a Hyena step (bench/cpu_speed.py's ``saved_floats``)."""

import pytest

from bench.cpu_speed import saved_floats
from models.config import ACTIVATION_FLOATS


@pytest.mark.parametrize("log2", [10, 12])
def test_hyena_estimate_covers_the_kept_tensors_within_one_float(log2):
    kept = saved_floats("hyena", log2)
    assert ACTIVATION_FLOATS["hyena"] - 1 < kept <= ACTIVATION_FLOATS["hyena"], kept

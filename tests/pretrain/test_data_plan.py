"""Cutting and dealing windows (pure functions): exactly once, equal counts per rank, remainder counted."""

import numpy as np
import pytest

from pretrain.data_plan import EpochPlan, batches_per_rank, windows_per_sample


def test_windows_per_sample():
    assert windows_per_sample(np.array([1, 2, 5, 6, 11, 12, 16]), 5).tolist() == [0, 1, 1, 1, 2, 2, 3]


def _deal(plan, dp_size):
    rows = []
    for rank in range(dp_size):
        for b in range(plan.batches):
            sample, start, avail = plan.rows(rank, b)
            rows += [(int(s), int(t), int(a)) for s, t, a in zip(sample, start, avail)]
    return rows


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("dp_size, micro_batch", [(1, 1), (3, 4), (2, 7)])
def test_every_window_dealt_at_most_once_and_remainder_counted(shuffle, dp_size, micro_batch):
    lengths = np.random.default_rng(5).integers(1, 400, size=60)
    plan = EpochPlan(lengths, seq_len=16, micro_batch=micro_batch, dp_size=dp_size, seed=3, epoch=2, shuffle=shuffle)
    rows = _deal(plan, dp_size)
    assert len(rows) == len(set(rows)) == plan.batches * dp_size * micro_batch
    stats = plan.stats()
    assert stats["windows"] == int(windows_per_sample(lengths, 16).sum())
    assert stats["windows_dealt"] + stats["windows_not_dealt"] == stats["windows"]
    assert stats["windows_not_dealt"] < dp_size * micro_batch and stats["filler_rows"] == 0
    for s, start, avail in rows:  # windows lie inside their sample; padded ones only in short samples
        assert 0 <= start and start + avail <= lengths[s] and 2 <= avail <= 17
        assert avail == 17 or lengths[s] - 1 < 16
    by_sample = {}
    for s, start, _ in rows:
        by_sample.setdefault(s, []).append(start)
    for s, starts in by_sample.items():  # one tiling per sample: same phase, stride seq_len
        assert len({st % 16 for st in starts}) == 1 and starts[0] % 16 <= plan.slack[s]


def test_without_remainder_dropping_every_window_is_dealt_and_filler_is_counted():
    lengths = np.array([100, 37, 1, 50])
    plan = EpochPlan(lengths, seq_len=10, micro_batch=3, dp_size=2, seed=0, epoch=0, shuffle=True,
                     drop_remainder=False)
    rows = _deal(plan, 2)
    real = [r for r in rows if r[0] >= 0]
    assert len(real) == len(set(real)) == plan.num_windows == 9 + 3 + 0 + 4
    assert plan.batches == batches_per_rank(16, 3, 2, False) == 3
    assert sum(r[0] < 0 for r in rows) == plan.stats()["filler_rows"] == 2


def test_unshuffled_order_is_genome_order_from_phase_zero():
    plan = EpochPlan(np.array([25, 30]), seq_len=10, micro_batch=2, dp_size=1, seed=0, epoch=0, shuffle=False)
    assert [plan.rows(0, b)[1].tolist() for b in range(plan.batches)] == [[0, 10], [0, 10]]
    assert plan.rows(0, 1)[0].tolist() == [1, 1]


def test_order_is_a_function_of_seed_and_epoch():
    lengths = np.full(40, 101)
    def first_rows(seed, epoch):
        plan = EpochPlan(lengths, seq_len=10, micro_batch=8, dp_size=2, seed=seed, epoch=epoch)
        return [x.tolist() for x in plan.rows(1, 3)]
    assert first_rows(1, 0) == first_rows(1, 0)
    assert first_rows(1, 0) != first_rows(1, 1) and first_rows(1, 0) != first_rows(2, 0)


def test_rc_flags_are_deterministic_with_the_right_rate():
    plan = EpochPlan(np.full(10, 1001), seq_len=10, micro_batch=1000, dp_size=1, seed=0, epoch=0)
    flags = plan.rc_flags(0, 0, 0.3)
    assert (flags == plan.rc_flags(0, 0, 0.3)).all() and 0.25 < flags.mean() < 0.35
    assert not plan.rc_flags(0, 0, 0.0).any() and plan.rc_flags(0, 0, 1.0).all()

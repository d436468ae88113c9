"""LR schedule and the sequence-length warm-up plan."""

import pytest
import torch

from pretrain.schedule import Stage, batch_split, build_stages, lr_at, lr_lambda, stage_at


def test_lr_warms_up_linearly_then_follows_a_cosine_to_the_floor():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(4, **kw) == pytest.approx(5e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half way: midpoint of lr and floor
    assert lr_at(110, **kw) == pytest.approx(1e-4)
    assert lr_at(500, **kw) == pytest.approx(1e-4)  # held at the floor after max_steps
    values = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_at(50, schedule="constant", **kw) == 1e-3


def test_lambda_drives_a_torch_scheduler_like_lr_at():
    kw = dict(lr=0.5, min_lr=0.05, warmup_steps=3, max_steps=20)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(**kw))
    seen = []
    for _ in range(25):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([lr_at(s, **kw) for s in range(25)])


def test_batch_split_keeps_tokens_per_step_for_any_data_parallel_size():
    for dp in (1, 2, 4, 8):
        mb, ga = batch_split(tokens_per_step=2**18, seq_len=1024, dp=dp, micro_batch_tokens=2**15)
        assert mb * ga * dp * 1024 == 2**18
        assert mb * 1024 <= 2**15
    # a window longer than the micro-batch budget still runs one window at a time
    assert batch_split(tokens_per_step=2**21, seq_len=2**20, dp=1, micro_batch_tokens=1024) == (1, 2)


def test_batch_split_errors_say_what_to_change():
    with pytest.raises(ValueError, match="not a multiple of the window length 1000"):
        batch_split(tokens_per_step=4096, seq_len=1000, dp=1, micro_batch_tokens=4096)
    with pytest.raises(ValueError, match="cannot be dealt evenly to 8 data-parallel ranks"):
        batch_split(tokens_per_step=2**22, seq_len=2**20, dp=8, micro_batch_tokens=2**20)


def test_stages_run_back_to_back_with_constant_tokens_per_step():
    stages = build_stages(seq_lens=[256, 512, 1024], stage_tokens=[10_000, 4096], tokens_per_step=4096, dp=2,
                          micro_batch_tokens=1024)
    assert stages == [
        Stage(0, 256, 0, 3, micro_batch=4, grad_accum=2),  # ceil(10000 / 4096) = 3 steps
        Stage(1, 512, 3, 4, micro_batch=2, grad_accum=2),
        Stage(2, 1024, 4, None, micro_batch=1, grad_accum=2),
    ]
    for s in stages:
        assert s.micro_batch * s.grad_accum * 2 * s.seq_len == 4096
    assert [stage_at(stages, k).index for k in range(7)] == [0, 0, 0, 1, 2, 2, 2]


def test_single_stage_without_warmup():
    (only,) = build_stages(seq_lens=[1024], stage_tokens=[], tokens_per_step=8192, dp=1, micro_batch_tokens=8192)
    assert (only.start_step, only.end_step, only.micro_batch, only.grad_accum) == (0, None, 8, 1)
    assert stage_at([only], 10**9) is only


def test_plan_must_reach_the_final_length_within_the_schedule():
    from parallel import ParallelDims
    from pretrain.args import resolve
    from pretrain.plan import build_plan

    base = ["data.path=shards", "train.seq_len=1024", "train.tokens_per_step=4096",
            "train.warmup_stages=[{seq_len: 512, tokens: 40960}]"]  # 10 steps at 512
    with pytest.raises(ValueError, match=r"take 10 optimizer steps but train.max_steps=10: train.seq_len=1024 "
                                         r"would never be reached; raise train.max_steps"):
        build_plan(resolve(None, base + ["train.max_steps=10"]), ParallelDims(dp=2))
    # part of a longer schedule: the run may stop inside the warm-up and be continued
    stages = build_plan(resolve(None, base + ["train.max_steps=4", "train.lr_decay_steps=100"]), ParallelDims(dp=2))
    assert [(s.seq_len, s.start_step, s.end_step) for s in stages] == [(512, 0, 10), (1024, 10, None)]
    with pytest.raises(ValueError, match=r"but train.lr_decay_steps=10"):
        build_plan(resolve(None, base + ["train.max_steps=4", "train.lr_decay_steps=10"]), ParallelDims(dp=2))

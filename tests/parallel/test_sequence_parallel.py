"""Sequence parallelism = one process: hyena, mamba and transformer on real hg38 windows, gloo processes on CPU.

For SP = 2, SP = 4 and DP 2 x SP 2, the gathered logits, the loss and EVERY parameter's gradient (summed over the
SP group, averaged over DP) equal those of the same model run whole in one process: within 1e-5 relative in
float32, 1e-10 in float64. Also: Mamba's bytes per layer do not depend on L, the collectives on their own, the
Mamba scan's initial / last state across ranks, and the errors (raised before any collective).
"""

import pytest
import torch
import torch.distributed as dist
from sp_harness import TOL, compare_to_single_process, hg38_windows, rel, spawn, tiny_model

from models.config import ModelConfig
from parallel import ParallelDims, check_sequence_parallel

ARCHS = ("hyena", "mamba", "transformer")
DTYPES = (torch.float32, torch.float64)


@pytest.fixture(scope="module")
def windows(hg38_subset):
    """Real GRCh38 (chr20) windows: 4 of 64 (+1) bases and 2 of 128 (+1)."""
    return {64: hg38_windows(hg38_subset, 4, 64), 128: hg38_windows(hg38_subset, 2, 128, start=2_000_000)}


def _equivalence(dims, windows, extra=()):
    rows = 2 * dims.dp
    cases = [(arch, dtype, {}) for arch in ARCHS for dtype in DTYPES] + list(extra)
    return {(arch, str(dtype), tuple(sorted(over))):
            compare_to_single_process(dims, arch, dtype, windows[64][:rows], **over) for arch, dtype, over in cases}


def _assert_equivalent(results):
    assert len(results) >= 6
    for (arch, dtype, over), e in results.items():
        tol = TOL[getattr(torch, dtype.split(".")[1])]
        where = f"{arch} {dtype} {' '.join(over)}"
        assert e["params"] > 10, where
        assert e["logits"] <= tol, f"{where}: logits differ by {e['logits']:.2e}"
        assert e["loss"] <= tol, f"{where}: loss differs by {e['loss']:.2e}"
        assert e["grad"] <= tol, f"{where}: gradient of {e['worst_param']} differs by {e['grad']:.2e}"


# ---------------------------------------------------------------------------------------------------------
# SP = 2: equivalence, checkpointed blocks, bytes, collectives, Mamba states, errors (one set of processes)


def _sp2_checks(dims, windows):
    out = {"equivalence": _equivalence(dims, windows, extra=[
        ("hyena", torch.float64, {"checkpoint_activations": True}),
        ("mamba", torch.float64, {"checkpoint_activations": True})])}
    out["bytes"] = _mamba_bytes(dims, windows)
    out["collectives"] = _collectives(dims)
    out["mamba_states"] = _mamba_states(dims)
    out["errors"] = _runtime_errors(dims, windows)
    return out


def _mamba_bytes(dims, windows):
    """Bytes rank 0 sends per layer and direction at L = 64 and L = 128, Mamba and Hyena."""
    from parallel import apply_sequence_parallel, count_bytes, shard_sequence

    sent = {}
    for arch in ("mamba", "hyena"):
        for L in (64, 128):
            model = apply_sequence_parallel(tiny_model(arch, 128), dims)
            with count_bytes() as counter:
                model(shard_sequence(windows[L][:2, :-1], dims)).float().square().mean().backward()
            sent[arch, L] = {d: counter.per_tag(d) for d in ("forward", "backward")}
    return sent


def _collectives(dims):
    """seq_to_channel / channel_to_seq / halo_exchange / all_gather_stack against whole-tensor definitions."""
    from parallel import (all_gather_stack, channel_to_seq, gather_sequence, halo_exchange, seq_to_channel,
                          shard_sequence)

    P, r = dims.sp, dims.sp_rank
    g = torch.Generator().manual_seed(3)
    full = torch.randn(2, 8 * P, 4 * P, generator=g, dtype=torch.float64)  # the same on every rank
    weights = torch.randn(full.shape, generator=g, dtype=torch.float64)
    x = shard_sequence(full, dims).clone().requires_grad_()
    y = seq_to_channel(x, dims.sp_group)
    errs = {"seq_to_channel": rel(y, full[:, :, r * 4:(r + 1) * 4])}
    back = channel_to_seq(y, dims.sp_group)
    errs["roundtrip"] = rel(back, x)
    (back * shard_sequence(weights, dims)).sum().backward()
    errs["roundtrip_grad"] = rel(x.grad, shard_sequence(weights, dims))
    x.grad = None
    h = halo_exchange(x, 3, dims.sp_group)
    before = full[:, r * 8 - 3: r * 8] if r else torch.zeros(2, 3, 4 * P, dtype=full.dtype)
    errs["halo"] = rel(h[:, :3], before) if r else float(h[:, :3].detach().abs().max())
    # d/dx of sum(w * halo(x)) over every rank: own weight on the body, plus the next rank's halo weight
    w = torch.randn(h.shape, generator=torch.Generator().manual_seed(10 + r), dtype=full.dtype)
    (h * w).sum().backward()
    w_all = gather_sequence(w, dims).view(2, P, 8 + 3, 4 * P)
    expect = w_all[:, r, 3:].clone()
    if r + 1 < P:
        expect[:, -3:] += w_all[:, r + 1, :3]
    errs["halo_grad"] = rel(x.grad, expect)
    s = torch.full((3,), float(r + 1), dtype=torch.float64, requires_grad=True)
    stacked = all_gather_stack(s, dims.sp_group)
    errs["all_gather"] = rel(stacked[:, 0], torch.arange(1, P + 1, dtype=torch.float64))
    (stacked * (r + 1)).sum().backward()  # every rank uses every s with weight (its rank + 1)
    errs["all_gather_grad"] = rel(s.grad, torch.full((3,), P * (P + 1) / 2, dtype=torch.float64))
    return errs


def _mamba_states(dims):
    """The wrapped scan with an initial state and return_last_state = the whole-sequence scan."""
    from parallel import apply_sequence_parallel, gather_sequence, shard_sequence

    model = tiny_model("mamba", 64, torch.float64)
    mixer = model.layers[0].mixer
    g = torch.Generator().manual_seed(5)
    Di, N = mixer.d_inner, mixer.d_state
    xc, z = (torch.randn(2, 64, Di, generator=g, dtype=torch.float64) for _ in range(2))
    delta = torch.randn(2, 64, Di, generator=g, dtype=torch.float64)
    B, C = (torch.randn(2, 64, N, generator=g, dtype=torch.float64) for _ in range(2))
    h0 = torch.randn(2, Di, N, generator=g, dtype=torch.float64)
    ref_y, ref_last = mixer.scan(xc, delta, B, C, z, initial_state=h0, return_last_state=True)
    apply_sequence_parallel(model, dims)
    y, last = mixer.scan(*(shard_sequence(t, dims) for t in (xc, delta, B, C, z)), initial_state=h0,
                         return_last_state=True)
    return {"y": rel(gather_sequence(y, dims), ref_y), "last_state": rel(last, ref_last)}


def _runtime_errors(dims, windows):
    """Each error is a ValueError raised on every rank before any collective (the group stays usable)."""
    from parallel import apply_sequence_parallel, shard_sequence

    messages = {}

    def expect(key, fn):
        try:
            fn()
        except ValueError as err:
            messages[key] = str(err)

    long_model = apply_sequence_parallel(tiny_model("hyena", 64), dims)
    expect("l_max", lambda: long_model(shard_sequence(windows[128][:1, :-1], dims)))
    mamba = apply_sequence_parallel(tiny_model("mamba", 64), dims)
    expect("halo", lambda: mamba(torch.full((1, 2), 7)))  # 4 tokens over 2 ranks < d_conv - 1 = 3 per rank
    expect("d_model", lambda: apply_sequence_parallel(tiny_model("hyena", 64, d_model=15), dims))
    expect("heads", lambda: apply_sequence_parallel(tiny_model("transformer", 64, d_model=18,
                                                                transformer={"n_head": 3}), dims))
    expect("twice", lambda: apply_sequence_parallel(long_model, dims))
    dist.barrier(group=dims.sp_group)  # nobody was left waiting inside a collective
    return messages


@pytest.mark.slow
@pytest.mark.distributed
def test_sp2_equals_one_process(windows, tmp_path):
    out = spawn(_sp2_checks, dp=1, sp=2, payload=windows, tmp=tmp_path)
    _assert_equivalent(out["equivalence"])
    assert ("hyena", "torch.float64", ("checkpoint_activations",)) in out["equivalence"]

    sent = out["bytes"]
    for direction in ("forward", "backward"):
        assert sent["mamba", 64][direction] == sent["mamba", 128][direction], direction  # independent of L
    # Hyena, for contrast: two all-to-alls of the (B, L/2, d) gated product each way grow with L; rank 0's halo
    # of k-1=2 positions of the (B, L/2, 3d) short-conv input does not (B=2, d=16, fp32)
    for L in (64, 128):
        a2a = 2 * (2 * L // 2 * 16 * 4 // 2)
        assert set(sent["hyena", L]["forward"].values()) == {a2a + 2 * 2 * 48 * 4}
        assert set(sent["hyena", L]["backward"].values()) == {a2a}
    # rank 0, per Mamba layer (B=2, Di=32, N=4, fp32): halo of d_conv-1=3 positions to rank 1, all-gather of
    # (decay product, final state) to 1 peer; backward: the all-gather's reduce-scatter, no halo (rank 0 has no
    # rank before it to send a halo gradient to)
    per_layer = {f"layers.{i}.mixer": 3 * 2 * 32 * 4 + 2 * 2 * 32 * 4 * 4 for i in (0, 1)}
    assert sent["mamba", 64]["forward"] == per_layer
    assert sent["mamba", 64]["backward"] == {k: 2 * 2 * 32 * 4 * 4 for k in per_layer}

    for name, err in out["collectives"].items():
        assert err <= 1e-15, f"{name}: {err}"
    assert out["mamba_states"]["y"] <= 1e-12 and out["mamba_states"]["last_state"] <= 1e-12, out["mamba_states"]

    errors = out["errors"]
    assert "exceeds model.l_max=64" in errors["l_max"]
    assert "fewer than the 3 that the mamba causal convolution needs" in errors["halo"]
    assert "d_model=15 is not divisible by parallel.sequence=2" in errors["d_model"]
    assert "n_head=3 is not divisible by parallel.sequence=2" in errors["heads"]
    assert "already applied" in errors["twice"]


@pytest.mark.slow
@pytest.mark.distributed
def test_sp4_equals_one_process(windows, tmp_path):
    _assert_equivalent(spawn(_equivalence, dp=1, sp=4, payload=windows, tmp=tmp_path))


@pytest.mark.slow
@pytest.mark.distributed
def test_dp2_sp2_equals_one_process(windows, tmp_path):
    _assert_equivalent(spawn(_equivalence, dp=2, sp=2, payload=windows, tmp=tmp_path))


# ---------------------------------------------------------------------------------------------------------
# errors that need no process group


@pytest.mark.parametrize("cfg, sp, lens, message", [
    (dict(arch="hyena", d_model=30), 4, (), "model.d_model=30 is not divisible by parallel.sequence=4"),
    (dict(arch="transformer", d_model=48, transformer={"n_head": 6}), 4, (), "n_head=6 is not divisible"),
    (dict(arch="mamba", l_max=1024), 2, (1000, 1001), "window length 1001 is not divisible by parallel.sequence=2"),
    (dict(arch="mamba", l_max=1024), 2, (2048,), "exceeds model.l_max=1024"),
    (dict(arch="mamba", l_max=1024), 4, (8,), "leaves 2 positions per rank, fewer than the 3"),
    (dict(arch="hyena", l_max=1024), 0, (), "parallel.sequence must be >= 1"),
])
def test_config_errors_need_no_process_group(cfg, sp, lens, message):
    from models.config import from_dict

    with pytest.raises(ValueError, match=message):
        check_sequence_parallel(from_dict(ModelConfig, cfg, path="model"), sp, lens)


def test_unknown_architecture_and_unbuilt_dims_are_refused():
    from parallel import apply_sequence_parallel

    cfg = ModelConfig()
    cfg.arch = "rwkv"
    with pytest.raises(ValueError, match="has no sequence-parallel implementation"):
        check_sequence_parallel(cfg, 2)
    with pytest.raises(ValueError, match="needs a built ParallelDims"):
        apply_sequence_parallel(torch.nn.Linear(2, 2), ParallelDims(dp=1, sp=2))
    assert apply_sequence_parallel(model := torch.nn.Linear(2, 2), ParallelDims(dp=1, sp=1)) is model


# ---------------------------------------------------------------------------------------------------------
# the memory-saving pieces of the wrapped mixers, against the model's own computation (one process)


@pytest.mark.parametrize("dtype", DTYPES)
def test_chunked_channel_filter_equals_the_model(dtype, monkeypatch):
    """Hyena's filter rows of one rank, evaluated in chunks and recomputed in the backward (a chunk size that
    does not divide L): values and gradients equal the model's own autograd computation."""
    from parallel import mixers

    tol = 1e-5 if dtype == torch.float32 else 1e-10
    filt = tiny_model("hyena", 300, dtype).layers[0].mixer.filter_fn
    params = list(filt.implicit_filter.parameters())
    ref = filt.filter(300)[4:12]
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref_grads = torch.autograd.grad((ref * w).sum(), params)
    monkeypatch.setattr(mixers, "FILTER_CHUNK", 64)
    k = mixers.hyena_channel_filter(filt, 300, 4, 12)
    assert rel(k, ref) <= tol
    for g, r in zip(torch.autograd.grad((k * w).sum(), params), ref_grads):
        assert rel(g, r) <= tol


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jump", [0.0, 40.0])
def test_mamba_closed_form_fold_equals_a_second_scan(dtype, jump, monkeypatch):
    """Mamba's slice scan with the carried-in state folded in closed form (``mamba_scan_carried``: one scan
    from zero, exp(A cumsum Δ) in chunks of 11 positions over L = 300, hand-written backwards) against the
    second-scan formulation it replaces: ``Mamba.scan`` from the carried state H = H0 + decay * S / 2, where
    decay is exp(A sum Δ) and S the zero-state final state, as the collective would combine them. The outputs,
    decay, S, H and the gradients of every input (xc, delta, B, C, z, H0, A_log, dt bias, D) agree. ``jump``
    raises Δ from position 200 so that exp(A cumsum Δ) underflows to 0 and the remaining chunks are skipped;
    softplus is the identity past 20 at a few entries."""
    import torch.nn.functional as F

    from parallel import mixers

    tol = 1e-5 if dtype == torch.float32 else 1e-10
    monkeypatch.setattr(mixers, "FOLD_CHUNK_ELEMENTS", 11 * 2 * 32 * 4)
    mixer = tiny_model("mamba", 300, dtype).layers[0].mixer
    Di, N, L = mixer.d_inner, mixer.d_state, 300
    assert (Di, N) == (32, 4)
    g = torch.Generator().manual_seed(4)
    xc, z = (torch.randn(2, L, Di, generator=g, dtype=dtype) for _ in range(2))
    delta = torch.randn(2, L, Di, generator=g, dtype=dtype) * 0.5 - 2
    delta[:, 200:] += jump
    delta[0, 7, :5] = 25.0
    B, C = (torch.randn(2, L, N, generator=g, dtype=dtype) for _ in range(2))
    H0 = torch.randn(2, Di, N, generator=g, dtype=dtype)
    inputs = [xc, delta, B, C, z, H0]
    for t in inputs:
        t.requires_grad_()
    inputs += [mixer.A_log, mixer.dt_proj.bias, mixer.D]
    w = [torch.randn(2, L, Di, generator=g, dtype=dtype)] + [torch.randn(2, Di, N, generator=g, dtype=dtype)
                                                           for _ in range(3)]

    def carry(decay, last):
        H = H0 + 0.5 * decay * last
        return H, H

    s = F.softplus(delta + mixer.dt_proj.bias).sum(dim=1)
    decay = torch.exp(s[..., None] * -torch.exp(mixer.A_log))
    last = mixer.scan(xc, delta, B, C, z, return_last_state=True)[1]
    H = carry(decay, last)[0]
    ref = (mixer.scan(xc, delta, B, C, z, initial_state=H), decay, last, H)
    ref_grads = torch.autograd.grad(sum((r * wi).sum() for r, wi in zip(ref, w)), inputs)
    live, fold_gate = [], mixers._FoldGate.apply

    def counting_fold_gate(*args):
        live.append(args[-1].live)  # the chunks (of 28) where the carried state is not yet exactly 0
        return fold_gate(*args)

    monkeypatch.setattr(mixers._FoldGate, "apply", counting_fold_gate)
    got = mixers.mamba_scan_carried(mixer, xc, delta, B, C, z, carry)
    assert (18 < live[0] < 28) if jump else live[0] == 28, live
    for a, b in zip(got, ref):
        assert rel(a, b) <= tol
    for name, a, b in zip("xc delta B C z H0 A_log bias D".split(),
                          torch.autograd.grad(sum((r * wi).sum() for r, wi in zip(got, w)), inputs), ref_grads):
        assert rel(a, b) <= tol, name



"""kernels.scan.ref: chunked parallel scan vs the sequential float64 recurrence, the mamba_ssm goldens, memory."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode

from kernels.scan.ref import _scan_, selective_scan_ref


def _expand(X, layout, D):
    """B or C as (b|1, D, N, L|1) for the sequential reference."""
    if layout == "shared":
        return X[None, :, :, None]
    if layout == "per_batch":
        return X[:, None]
    return X.repeat_interleave(D // X.shape[1], dim=1)


def scan_sequential(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                    b_layout="per_batch", c_layout="per_batch"):
    """The recurrence written out one time step at a time (the definition, in float64)."""
    dt = delta + delta_bias[:, None] if delta_bias is not None else delta
    dt = F.softplus(dt) if delta_softplus else dt
    Bx, Cx = _expand(B, b_layout, u.shape[1]), _expand(C, c_layout, u.shape[1])
    h = initial_state if initial_state is not None else u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        Bt = Bx[..., t] if Bx.shape[-1] > 1 else Bx[..., 0]
        Ct = Cx[..., t] if Cx.shape[-1] > 1 else Cx[..., 0]
        h = torch.exp(dt[..., t, None] * A) * h + dt[..., t, None] * Bt * u[..., t, None]
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y, h


def _make(Bsz, D, N, L, b_layout, c_layout, G=2, full=True, softplus=True, seed=0, h0=False):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    shape = {"shared": (D, N), "per_batch": (Bsz, N, L), "grouped": (Bsz, G, N, L)}
    x = dict(u=r(Bsz, D, L), delta=0.5 * r(Bsz, D, L) - 1 if softplus else torch.rand(Bsz, D, L, generator=g,
             dtype=torch.float64) * 0.5, A=-(0.2 + 2 * torch.rand(D, N, generator=g, dtype=torch.float64)),
             B=r(*shape[b_layout]), C=r(*shape[c_layout]))
    if full:
        x.update(D=r(D), z=r(Bsz, D, L), delta_bias=r(D) - 1 if softplus else 0.1 * r(D).abs())
    if h0:
        x["initial_state"] = r(Bsz, D, N)
    return x


def _run(fn, inputs, weights, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out, last = fn(**leaves, **kw)
    loss = (out * weights[0]).sum() + (last * weights[1]).sum()
    loss.backward()
    return out.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def _compare(inputs, b_layout, c_layout, softplus, chunk, tol=1e-12):
    Bsz, D, L = inputs["u"].shape
    N = inputs["A"].shape[1]
    w = (torch.randn(Bsz, D, L, dtype=torch.float64), torch.randn(Bsz, D, N, dtype=torch.float64))
    ours = _run(selective_scan_ref, inputs, w, delta_softplus=softplus, return_last_state=True, chunk=chunk)
    ref = _run(scan_sequential, inputs, w, delta_softplus=softplus, b_layout=b_layout, c_layout=c_layout)
    assert _rel(ours[0], ref[0]) < tol and _rel(ours[1], ref[1]) < tol
    assert ours[2].keys() == ref[2].keys()
    for k in ref[2]:
        assert ours[2][k].dtype == torch.float64
        assert _rel(ours[2][k], ref[2][k]) < tol, k


@pytest.mark.parametrize("L", [1, 2, 7, 33, 130])
@pytest.mark.parametrize("layouts", [("per_batch", "per_batch"), ("shared", "grouped"), ("grouped", "shared")])
def test_matches_sequential_recurrence_with_states(L, layouts):
    inputs = _make(2, 6, 3, L, *layouts, G=3 if layouts[0] == "grouped" else 2, h0=True)
    for chunk in (4, 128):
        _compare(inputs, *layouts, softplus=True, chunk=chunk)


def test_different_group_counts_for_B_and_C():
    inputs = _make(2, 12, 3, 19, "grouped", "grouped", G=2)
    inputs["C"] = torch.randn(2, 3, 3, 19, dtype=torch.float64)  # 3 groups for C, 2 for B -> lcm 6
    _compare(inputs, "grouped", "grouped", softplus=True, chunk=8)


@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_bare_scan_every_chunk_size(chunk):
    inputs = _make(1, 4, 2, 23, "per_batch", "per_batch", full=False, softplus=False)
    _compare(inputs, "per_batch", "per_batch", softplus=False, chunk=chunk)


def test_extreme_step_sizes_stay_exact():
    """Huge Δ (decays underflow to 0 inside a chunk) and tiny Δ (decays ~1) in the same sequence."""
    inputs = _make(1, 4, 16, 200, "per_batch", "per_batch", full=True, softplus=False)
    inputs["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(4, 1)  # Mamba's A = -(1..N)
    delta = torch.rand(1, 4, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    inputs["delta"] = torch.where(delta > 0.5, 300 * delta, 1e-6 * delta)  # Δ·A down to -4800 per step
    inputs["delta_bias"] = torch.zeros(4, dtype=torch.float64)
    _compare(inputs, "per_batch", "per_batch", softplus=False, chunk=64)


def test_gradcheck_all_inputs():
    x = _make(1, 2, 2, 5, "per_batch", "grouped", G=2, h0=True)
    names = list(x)

    def f(*args):
        out, last = selective_scan_ref(**dict(zip(names, args)), delta_softplus=True, return_last_state=True, chunk=2)
        return out, last

    assert torch.autograd.gradcheck(f, [x[k].requires_grad_(True) for k in names])


def test_reproduces_every_mamba_golden_case(golden):
    cases = torch.load(golden / "mamba" / "selective_scan.pt", weights_only=True)
    assert len(cases) >= 25
    for case in cases:
        inputs = {k: v for k, v in case["inputs"].items() if v is not None}
        B, D, L = inputs["u"].shape
        w = (case["out_weight"], torch.zeros(B, D, inputs["A"].shape[1], dtype=torch.float64))
        for chunk in (4, 128):
            out, last, grads = _run(selective_scan_ref, inputs, w, delta_softplus=case["delta_softplus"],
                                    return_last_state=True, chunk=chunk)
            assert (out - case["out"]).abs().max() <= 1e-10, case["name"]
            assert (last - case["last_state"]).abs().max() <= 1e-10, case["name"]
            assert grads.keys() == case["grads"].keys()
            for k, g in case["grads"].items():
                assert _rel(grads[k], g) < 1e-10, (case["name"], k)


def test_memory_saved_for_backward_is_bounded():
    """Saved: the inputs plus one (B, D, N) state per chunk -- never a (B, D, N, L) tensor."""
    Bsz, D, N, L, chunk = 1, 8, 16, 1000, 128
    x = {k: v.float().requires_grad_(True) for k, v in _make(Bsz, D, N, L, "per_batch", "per_batch").items()}
    out = selective_scan_ref(**x, delta_softplus=True, chunk=chunk)
    saved = out.grad_fn.saved_tensors
    n_chunks = -(-L // chunk)
    assert sum(t.numel() for t in saved) == sum(v.numel() for v in x.values()) + n_chunks * Bsz * D * N


def test_float32_and_bfloat16_inputs():
    x64 = _make(2, 4, 4, 40, "per_batch", "per_batch")
    out64, last64 = selective_scan_ref(**x64, delta_softplus=True, return_last_state=True)
    assert out64.dtype == last64.dtype == torch.float64
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        x = {k: v.to(dtype).requires_grad_(True) for k, v in x64.items()}
        out, last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
        assert out.dtype == dtype and last.dtype == torch.float32
        exact = selective_scan_ref(**{k: v.detach().double() for k, v in x.items()}, delta_softplus=True)
        # compared on the same rounded inputs: bf16 output is rounded once at the end, the work is float32
        assert _rel(out.double(), exact) < tol
        out.float().sum().backward()
        assert all(v.grad.dtype == dtype for v in x.values())


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("T", [1, 2, 4, 64])
def test_parallel_scan_primitive(T, reverse):
    a, b = torch.rand(T, 3, dtype=torch.float64), torch.randn(T, 3, dtype=torch.float64)
    expect, h = torch.empty_like(b), torch.zeros(3, dtype=torch.float64)
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        h = a[t] * h + b[t]
        expect[t] = h
    assert _rel(_scan_(a.clone(), b.clone(), reverse=reverse), expect) < 1e-14


def test_bad_inputs_raise_value_error():
    x = _make(2, 4, 3, 10, "per_batch", "per_batch", full=False)
    with pytest.raises(ValueError, match=r"B has shape \(2, 3, 9\)"):
        selective_scan_ref(**{**x, "B": torch.zeros(2, 3, 9, dtype=torch.float64)})
    with pytest.raises(ValueError, match="3 groups, which must divide D=4"):
        selective_scan_ref(**{**x, "C": torch.zeros(2, 3, 3, 10, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"delta must have shape \(2, 4, 10\)"):
        selective_scan_ref(**{**x, "delta": torch.zeros(2, 4, 11, dtype=torch.float64)})
    with pytest.raises(ValueError, match=r"initial_state must have shape \(2, 4, 3\)"):
        selective_scan_ref(**x, initial_state=torch.zeros(2, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        selective_scan_ref(**x, chunk=48)
    with pytest.raises(ValueError, match="L must be >= 1"):
        selective_scan_ref(**_make(2, 4, 3, 0, "per_batch", "per_batch", full=False))
    with pytest.raises(ValueError, match="A is on meta but u is on cpu"):
        selective_scan_ref(**{**x, "A": x["A"].to("meta")})
    with pytest.raises(ValueError, match="z must be floating point"):
        selective_scan_ref(**x, z=torch.zeros(2, 4, 10, dtype=torch.long))


class _OpTracker(TorchDispatchMode):
    """Counts the aten ops run and the largest tensor any of them produced (numel)."""

    def __init__(self):
        super().__init__()
        self.ops, self.largest = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def _track(Bsz, D, N, L, chunk):
    x = {k: v.float().requires_grad_(True) for k, v in _make(Bsz, D, N, L, "per_batch", "per_batch").items()}
    with _OpTracker() as tracker:
        out = selective_scan_ref(**x, delta_softplus=True, chunk=chunk)
        out.backward(torch.ones_like(out))
    return tracker


def test_no_allocation_grows_with_the_full_state():
    """Forward + backward never materialise (B, D, N, L): every tensor is input-sized or O(B·D·N·chunk)."""
    Bsz, D, N, L, chunk = 1, 8, 16, 1000, 32
    tracker = _track(Bsz, D, N, L, chunk)
    n_chunks = -(-L // chunk)
    inputs = max(Bsz * D * L, Bsz * N * L)  # u, delta, z (B, D, L); B, C (B, N, L)
    bound = max(inputs, Bsz * D * N * chunk, n_chunks * Bsz * D * N)  # inputs | one chunk's states | chunk starts
    assert bound < Bsz * D * N * L // 4
    assert tracker.largest <= bound


def test_work_is_vectorised_over_channels_and_states(monkeypatch):
    """The number of torch ops depends on the number of chunks and the chunk length only, not on D or N."""
    import kernels.scan.ref as ref

    monkeypatch.setattr(ref, "PARALLEL_MIN_ELEMENTS", 1 << 60)  # all ops in this thread, where the mode sees them
    small, large = _track(1, 2, 2, 100, 16).ops, _track(2, 24, 16, 100, 16).ops
    assert small == large
    assert _track(1, 2, 2, 200, 16).ops < 2.2 * small  # linear in L / chunk


@pytest.mark.parametrize("layouts,G", [(("per_batch", "per_batch"), 2), (("shared", "grouped"), 2),
                                       (("grouped", "grouped"), 4), (("grouped", "shared"), 3)])
def test_channel_slices_in_threads_match_sequential(monkeypatch, layouts, G):
    """On CPU with several threads the channels are scanned in per-thread slices (whole groups each)."""
    import kernels.scan.ref as ref

    monkeypatch.setattr(ref, "PARALLEL_MIN_ELEMENTS", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        inputs = _make(2, 12, 3, 37, *layouts, G=G, h0=True)
        spec = ref._check_inputs(*(inputs.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias",
                                                           "initial_state")), 8)
        slices = ref._channel_slices(spec, inputs["u"], inputs["B"], inputs["C"])
        blocks = 12 if layouts == ("per_batch", "per_batch") else G  # slices hold whole groups
        assert slices is not None and len(slices) == min(3, blocks)
        assert slices[0].start == 0 and slices[-1].stop == 12
        assert all(a.stop == b.start and a.start % (12 // blocks) == 0 for a, b in zip(slices, slices[1:]))
        _compare(inputs, *layouts, softplus=True, chunk=8)
    finally:
        torch.set_num_threads(threads)

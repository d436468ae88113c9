"""Torch reference of the Mamba-1 selective scan: chunked, vectorised, with an explicit backward.

Definition (mamba_ssm's ``selective_scan_ref``; layouts of DESIGN §6)::

    Δ     = softplus(delta + delta_bias)          (bias and softplus optional; softplus is x itself past 20)
    h_t   = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t    (h_{-1} = initial_state or 0;  "B̄ = Δ·B", no ZOH on B)
    y_t   = Σ_n C_t[n] h_t[n]  (+ D u_t)          out = y ⊙ silu(z)  (if z is given)

Tensor legend: t time inside a chunk, b batch, g channel groups, k channels per group (D = g·k), n state.
One chunk's states are held time-major, ``(t, b, g, k, n)``, so each level of the parallel scan is one
vectorised op over whole states; u, Δ are ``(t, b, g, k)``. ``g`` is the least common multiple of the group
counts of grouped B / C (1 when none is grouped), so every layout of B and C broadcasts against the state
without being copied to D channels: shared (D, N) -> (g, k, n), per batch (B, N, L) -> (t, b, 1, 1, n),
grouped (B, G, N, L) -> (t, b, g, 1, n).

Memory: the time axis is cut into chunks of ``chunk`` steps. The forward keeps only the state at each chunk
start (B·D·N·L/chunk); the backward walks the chunks in reverse, recomputes a chunk's states from its start
state, and carries dL/dh across chunk boundaries. Peak memory is O(B·D·L) + O(B·D·N·chunk), never
O(B·D·N·L). Inside a chunk the linear recurrence is solved by a work-efficient (Brent–Kung) parallel scan over
time: log2(chunk) vectorised levels, products of decays exp(ΔA) ∈ (0, 1] and fused multiply-adds only — no
division by cumulative products (which underflow) and no exp(−cumsum) (which overflows), so the result
keeps the accuracy of the sequential recurrence (~1e-15 relative in float64) for any Δ.

Computation runs in float32 or wider (half-precision inputs are upcast, float64 stays float64); ``out`` has
``u``'s dtype, ``last_state`` the compute dtype, gradients the dtype of their input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK_STATE_ELEMENTS = 1 << 18  # target size of one chunk's (t, b, d, n) state: ~1 MiB in float32, cache-sized
MIN_CHUNK, MAX_CHUNK = 16, 256
SOFTPLUS_THRESHOLD = 20.0  # F.softplus(x) returns x itself where x > 20 (beta = 1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    chunk: int | None = None,
):
    """Selective scan with mamba_ssm's layouts (see the module docstring for the definition).

    u, delta, z: (B, D, L); A: (D, N); B, C: (D, N) shared, (B, N, L) per batch or (B, G, N, L) grouped;
    D, delta_bias: (D,); initial_state: (B, D, N). ``chunk`` (a power of two) is the number of time steps
    whose states are materialised at once; by default the largest that keeps one chunk's states near
    ``CHUNK_STATE_ELEMENTS`` (within [16, 256]; states saved for the backward are then at most N/16 x u's size). Returns ``out`` (B, D, L), or ``(out, last_state)`` with
    ``return_last_state=True`` (last_state: (B, D, N)). Differentiable in every tensor argument.
    """
    spec = _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk)
    out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, spec, delta_softplus)
    return (out, last) if return_last_state else out


class _Spec:
    """Static description of one call: sizes, B/C layouts, group count, chunk length, compute dtype."""

    def __init__(self, batch, dim, length, nstate, groups, b_layout, c_layout, chunk, dtype):
        self.batch, self.dim, self.length, self.nstate = batch, dim, length, nstate
        self.groups, self.per_group = groups, dim // groups
        self.b_layout, self.c_layout = b_layout, c_layout
        self.chunk, self.dtype = chunk, dtype


def _layout(name: str, X: torch.Tensor, batch: int, dim: int, nstate: int, length: int) -> str:
    if X.dim() == 2 and tuple(X.shape) == (dim, nstate):
        return "shared"
    if X.dim() == 3 and tuple(X.shape) == (batch, nstate, length):
        return "per_batch"
    if X.dim() == 4 and X.shape[0] == batch and X.shape[2:] == (nstate, length):
        if X.shape[1] < 1 or dim % X.shape[1]:
            raise ValueError(f"selective_scan: {name} has {X.shape[1]} groups, which must divide D={dim}")
        return "grouped"
    raise ValueError(
        f"selective_scan: {name} has shape {tuple(X.shape)}; expected ({dim}, {nstate}) shared, "
        f"({batch}, {nstate}, {length}) per batch or ({batch}, G, {nstate}, {length}) grouped"
    )


def check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state):
    """Raise ``ValueError`` naming the argument whose shape, dtype or device does not fit; else return
    ``(batch, dim, length, nstate, b_layout, c_layout)``. Shared by the reference and the Triton path."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (B, D, L), got shape {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length < 1:
        raise ValueError("selective_scan: the sequence length L must be >= 1")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must be (D, N) with D={dim}, got shape {tuple(A.shape)}")
    nstate = A.shape[1]
    for name, t, shape in (("delta", delta, (batch, dim, length)), ("z", z, (batch, dim, length)),
                           ("D", D, (dim,)), ("delta_bias", delta_bias, (dim,)),
                           ("initial_state", initial_state, (batch, dim, nstate))):
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"selective_scan: {name} must have shape {shape}, got {tuple(t.shape)}")
    b_layout = _layout("B", B, batch, dim, nstate, length)
    c_layout = _layout("C", C, batch, dim, nstate, length)
    named = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    for name, t in named.items():
        if t is None:
            continue
        if not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be floating point, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}; use one device")
    return batch, dim, length, nstate, b_layout, c_layout


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, chunk) -> _Spec:
    batch, dim, length, nstate, b_layout, c_layout = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if chunk is None:
        chunk = 1 << max(0, (CHUNK_STATE_ELEMENTS // max(1, batch * dim * nstate)).bit_length() - 1)
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, chunk))
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"selective_scan: chunk must be a power of two >= 1, got {chunk}")
    groups = 1
    for X, lay in ((B, b_layout), (C, c_layout)):
        if lay == "grouped":
            groups = groups * X.shape[1] // math.gcd(groups, X.shape[1])
    dtype = torch.float32
    for t in (u, delta, A, B, C, D, z, delta_bias, initial_state):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return _Spec(batch, dim, length, nstate, groups, b_layout, c_layout, chunk, dtype)


# ---------------------------------------------------------------------------------------------------------
# Parallel scan inside a chunk (time is the leading axis, so every level is a vectorised op on whole states)


def _scan_(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """In place: ``b[t] <- a[t] * b[t-1] + b[t]`` along axis 0 (``t+1`` instead of ``t-1`` if reverse).

    Axis 0 has a power-of-two length T. Brent–Kung: an up-sweep builds the compositions of aligned blocks of
    2, 4, ... T steps, a down-sweep completes the prefixes; 2·log2(T) levels of vectorised multiply-adds.
    ``a`` is overwritten with block products. Returns ``b``.
    """
    T = b.shape[0]
    assert T & (T - 1) == 0 and a.shape[0] == T
    s = 1
    while s < T:  # up-sweep: the block's last element absorbs its first half's composition
        av, bv = a.unflatten(0, (T // (2 * s), 2 * s)), b.unflatten(0, (T // (2 * s), 2 * s))
        dst, src = (0, s) if reverse else (2 * s - 1, s - 1)
        bv[:, dst].addcmul_(av[:, dst], bv[:, src])
        av[:, dst].mul_(av[:, src])
        s *= 2
    s = T // 4
    while s >= 1:  # down-sweep: the middle of each block takes the full prefix that ends just before it
        lo = 1 if reverse else 2 * s - 1
        av = a[lo:lo + T - 2 * s].unflatten(0, (T // (2 * s) - 1, 2 * s))
        bv = b[lo:lo + T - 2 * s].unflatten(0, (T // (2 * s) - 1, 2 * s))
        dst, src = (s - 1, 2 * s - 1) if reverse else (s, 0)
        bv[:, dst].addcmul_(av[:, dst], bv[:, src])
        s //= 2
    return b


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


# ---------------------------------------------------------------------------------------------------------
# Views of one chunk


class _Chunk:
    """Inputs of time steps [t0, t1) in compute dtype, time-major, broadcastable against the (t,b,g,k,n) state.

    The time axis is padded to a power of two T for the parallel scan; padded steps have u = Δ = 0 (so
    they decay nothing and add nothing) and take no part in outputs or gradients.
    """

    def __init__(self, spec: _Spec, t0: int, t1: int, u, delta, A, B, C, delta_bias, softplus: bool):
        self.t0, self.t1, self.n = t0, t1, t1 - t0
        self.T = T = _pow2(self.n)
        g, k, dt = spec.groups, spec.per_group, spec.dtype
        self.u = _time_major(u[..., t0:t1], dt, T).unflatten(2, (g, k))  # (T, b, g, k)
        pre = u.new_empty(self.n, spec.batch, spec.dim, dtype=dt)
        pre.copy_(delta[..., t0:t1].permute(2, 0, 1))
        if delta_bias is not None:
            pre += delta_bias.to(dt)
        self.pre = pre.unflatten(2, (g, k))  # pre-activation (unpadded), for the softplus derivative
        self.delta = _pad0(F.softplus(self.pre) if softplus else self.pre, T)  # (T, b, g, k), zero on padding
        self.A = A.to(dt).unflatten(0, (g, k))  # (g, k, n)
        self.B = _bc_view(B, spec.b_layout, spec, t0, t1, T)
        self.C = _bc_view(C, spec.c_layout, spec, t0, t1, T)

    def decay(self) -> torch.Tensor:
        """exp(Δ_t A) as (T, b, g, k, n)."""
        return torch.exp(self.delta[..., None] * self.A)

    def drive(self) -> torch.Tensor:
        """Δ_t B_t u_t as (T, b, g, k, n)."""
        return (self.delta * self.u)[..., None] * self.B


def _time_major(x: torch.Tensor, dt: torch.dtype, T: int) -> torch.Tensor:
    """(b, c, t) slice -> (T, b, c) contiguous in dtype ``dt``, zero-padded in time."""
    out = x.new_zeros(T, x.shape[0], x.shape[1], dtype=dt)
    out[: x.shape[2]] = x.permute(2, 0, 1)
    return out


def _pad0(x: torch.Tensor, T: int) -> torch.Tensor:
    return x if x.shape[0] == T else torch.cat([x, x.new_zeros(T - x.shape[0], *x.shape[1:])])


def _bc_view(X: torch.Tensor, layout: str, spec: _Spec, t0: int, t1: int, T: int) -> torch.Tensor:
    """B or C for one chunk, broadcastable against the (T, b, g, k, n) state."""
    dt, g, k = spec.dtype, spec.groups, spec.per_group
    if layout == "shared":
        return X.to(dt).unflatten(0, (g, k))  # (g, k, n)
    if layout == "per_batch":
        return _time_major(X[..., t0:t1], dt, T)[:, :, None, None]  # (T, b, 1, 1, n)
    x = X[..., t0:t1].repeat_interleave(g // X.shape[1], dim=1)  # (b, g, n, t)
    return _time_major(x.flatten(1, 2), dt, T).unflatten(2, (g, spec.nstate))[:, :, :, None]  # (T, b, g, 1, n)


def _bc_reduce(grad5: torch.Tensor, layout: str, like: torch.Tensor, spec: _Spec, n: int) -> torch.Tensor:
    """Sum a (T, b, g, k, n) gradient down to B's or C's layout for the first ``n`` steps of one chunk."""
    if layout == "shared":
        return grad5.sum(dim=(0, 1)).flatten(0, 1)  # (D, N)
    if layout == "per_batch":
        return grad5[:n].sum(dim=(2, 3)).permute(1, 2, 0)  # (b, N, t)
    G = like.shape[1]
    r = grad5[:n].sum(dim=3).unflatten(2, (G, spec.groups // G)).sum(dim=3)  # (t, b, G, N)
    return r.permute(1, 2, 3, 0)  # (b, G, N, t)


def _states(ch: _Chunk, h0: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """States h_t of one chunk, (T, b, g, k, n), from the state h0 (b, g, k, n) before it. Consumes ``decay``."""
    hs = ch.drive()
    hs[0].addcmul_(decay[0], h0)  # fold the carried state into the first step
    return _scan_(decay, hs)


def _readout(hs: torch.Tensor, C: torch.Tensor, n: int) -> torch.Tensor:
    """y_t = Σ_n C_t h_t for the first ``n`` steps, as (b, D, n)."""
    return (hs[:n] * (C[:n] if C.dim() == 5 else C)).sum(dim=-1).flatten(2, 3).permute(1, 2, 0)


def _zeros_state(spec: _Spec, like: torch.Tensor) -> torch.Tensor:
    return like.new_zeros(spec.batch, spec.groups, spec.per_group, spec.nstate, dtype=spec.dtype)


def _chunks(spec: _Spec):
    return [(t0, min(t0 + spec.chunk, spec.length)) for t0 in range(0, spec.length, spec.chunk)]


class _SelectiveScanFn(torch.autograd.Function):
    """Chunked scan; the backward recomputes each chunk from its saved start state (see module docstring).

    On CPU with several intra-op threads, the channels are cut into one slice per thread and each slice is
    scanned whole by one Python thread running single-threaded torch ops (see ``_channel_slices``).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, spec: _Spec, softplus: bool):
        inputs = (u, delta, A, B, C, D, z, delta_bias, h0)
        slices = _channel_slices(spec, u, B, C)
        out = torch.empty_like(u)  # u's layout: a transposed (B, L, D) view stays one
        last = u.new_empty(spec.batch, spec.dim, spec.nstate, dtype=spec.dtype)
        if slices is None:
            starts = [_forward(spec, *inputs, softplus, out, last)]
        else:
            def part(sl):
                sub, args = _sub_problem(spec, sl, inputs)
                return _forward(sub, *args, softplus, out[:, sl], last[:, sl])
            starts = _in_threads(part, slices)
        ctx.spec, ctx.softplus, ctx.has_h0, ctx.slices = spec, softplus, h0 is not None, slices
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *starts)
        return out, last

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, *starts = ctx.saved_tensors
        spec, slices, inputs = ctx.spec, ctx.slices, (u, delta, A, B, C, D, z, delta_bias, None)
        if slices is None:
            return (*_backward(spec, inputs, starts[0], dout, dlast, ctx.softplus, ctx.has_h0), None, None)
        du, ddelta = torch.empty_like(u), torch.empty_like(delta)
        dz = torch.empty_like(z) if z is not None else None

        def part(i):
            sl = slices[i]
            sub, args = _sub_problem(spec, sl, inputs)
            dest = (du[:, sl], ddelta[:, sl], dz[:, sl] if dz is not None else None)
            dl = dlast[:, sl] if dlast is not None else None
            return _backward(sub, args, starts[i], dout[:, sl], dl, ctx.softplus, ctx.has_h0, dest)

        parts = _in_threads(part, list(range(len(slices))))
        grads = [du, ddelta]
        for j, X in ((2, A), (3, B), (4, C), (5, D)):
            grads.append(_join(X, [p[j] for p in parts], slices, spec, j))
        grads += [dz, _join(delta_bias, [p[7] for p in parts], slices, spec, 7),
                  torch.cat([p[8] for p in parts], dim=1) if ctx.has_h0 else None]
        return (*grads, None, None)


def _forward(spec: _Spec, u, delta, A, B, C, D, z, delta_bias, h0, softplus, out, last) -> torch.Tensor:
    """Scan all chunks, writing ``out`` (B, D, L) and ``last`` (B, D, N); returns the chunk start states."""
    g, k, dt = spec.groups, spec.per_group, spec.dtype
    chunks = _chunks(spec)
    starts = u.new_empty(len(chunks), spec.batch, g, k, spec.nstate, dtype=dt)
    h = h0.to(dt).unflatten(1, (g, k)) if h0 is not None else _zeros_state(spec, u)
    for i, (t0, t1) in enumerate(chunks):
        ch = _Chunk(spec, t0, t1, u, delta, A, B, C, delta_bias, softplus)
        starts[i] = h
        hs = _states(ch, h, ch.decay())
        h = hs[ch.n - 1].clone()
        out[..., t0:t1] = _gate(_readout(hs, ch.C, ch.n), u[..., t0:t1], D, z, t0, t1, dt)[0]
    last.copy_(h.flatten(1, 2))
    return starts


def _backward(spec: _Spec, inputs, starts, dout, dlast, softplus, has_h0, dest=None):
    """Gradients of every input (None where not given), walking the chunks in reverse."""
    u, delta, A, B, C, D, z, delta_bias, _ = inputs
    dt = spec.dtype
    grads = _Grads(spec, u, delta, A, B, C, D, z, delta_bias, dest)
    carry = dlast.to(dt).unflatten(1, (spec.groups, spec.per_group)) if dlast is not None else None
    carry = carry if carry is not None else _zeros_state(spec, u)
    for i, (t0, t1) in reversed(list(enumerate(_chunks(spec)))):
        ch = _Chunk(spec, t0, t1, u, delta, A, B, C, delta_bias, softplus)
        carry = _chunk_backward(ch, starts[i], carry, dout, grads, u, D, z, softplus)
    return grads.result(carry if has_h0 else None)


# ---------------------------------------------------------------------------------------------------------
# CPU: one channel slice per thread. Every time step of the scan is a handful of torch ops on one chunk; run
# with several OpenMP threads, each op is a parallel region that ends in a barrier, and on a busy machine a
# descheduled thread stalls every one of them (most samples then sit in libgomp's wait loop; 5-30x slower).
# Channels are independent, so the scan is cut into one channel slice per thread instead: each slice is
# scanned whole by its own thread with single-threaded ops, and the threads meet once per call.

PARALLEL_MIN_ELEMENTS = 1 << 16  # B*D*L*N below which the split is not worth a thread hand-off
_POOL: list = [None, None]  # (pid, executor): a forked child must not reuse its parent's threads


def _channel_slices(spec: _Spec, u, B, C) -> list[slice] | None:
    """Channel slices, one per intra-op thread (None: scan in the calling thread). Slices follow the groups
    of grouped B / C, so each slice is itself a scan with whole groups."""
    n = torch.get_num_threads()
    if torch.autograd.profiler._is_profiler_enabled:  # torch.profiler records the calling thread's ops only
        return None
    if u.device.type != "cpu" or n < 2 or spec.batch * spec.dim * spec.length * spec.nstate < PARALLEL_MIN_ELEMENTS:
        return None
    blocks = spec.dim  # equal pieces the channels may be cut into: whole groups of every grouped B / C
    for X, lay in ((B, spec.b_layout), (C, spec.c_layout)):
        if lay == "grouped":
            blocks = math.gcd(blocks, X.shape[1])
    n = min(n, blocks)
    if n < 2:
        return None
    width = spec.dim // blocks
    return [slice(width * (blocks * i // n), width * (blocks * (i + 1) // n)) for i in range(n)]


def _sub_problem(spec: _Spec, sl: slice, inputs):
    """The scan of channels ``sl`` alone: its spec and its inputs (views)."""
    u, delta, A, B, C, D, z, delta_bias, h0 = inputs

    def bc(X, layout):
        if layout == "shared":
            return X[sl]
        if layout == "per_batch":
            return X
        G = X.shape[1]
        return X[:, sl.start * G // spec.dim: sl.stop * G // spec.dim]

    args = (u[:, sl], delta[:, sl], A[sl], bc(B, spec.b_layout), bc(C, spec.c_layout),
            None if D is None else D[sl], None if z is None else z[:, sl],
            None if delta_bias is None else delta_bias[sl], None if h0 is None else h0[:, sl])
    sub = _check_inputs(*args, spec.chunk)
    sub.dtype = spec.dtype  # as the whole call (the backward does not pass initial_state)
    return sub, args


def _in_threads(fn, items) -> list:
    """``[fn(x) for x in items]``, one item per pool thread (single-threaded torch ops, no autograd)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    pid, pool = _POOL
    if pool is None or pid != os.getpid() or pool._max_workers < len(items):
        pool = ThreadPoolExecutor(len(items), thread_name_prefix="scan", initializer=torch.set_num_threads,
                                  initargs=(1,))
        _POOL[:] = [os.getpid(), pool]

    def run(x):
        with torch.no_grad():
            return fn(x)

    return list(pool.map(run, items))


def _join(like, parts, slices, spec: _Spec, index):
    """Gradients of one argument from the channel slices: concatenated over channels, or summed where every
    slice saw the whole tensor (B / C per batch)."""
    if like is None:
        return None
    if index in (3, 4):
        layout = spec.b_layout if index == 3 else spec.c_layout
        if layout == "per_batch":
            total = parts[0].clone()
            for p in parts[1:]:
                total += p
            return total
        if layout == "grouped":
            return torch.cat(parts, dim=1)
    return torch.cat(parts, dim=0)


def _gate(y, u_c, D, z, t0, t1, dt):
    """out = (y + D u) * silu(z) for one chunk, in compute dtype; also returns the pieces the backward needs."""
    pre_gate = y + D.to(dt)[:, None] * u_c.to(dt) if D is not None else y
    if z is None:
        return pre_gate, pre_gate, None
    zc = z[..., t0:t1].to(dt)
    return pre_gate * F.silu(zc), pre_gate, zc


class _Grads:
    """Gradient buffers: full-length ones written chunk by chunk, the others accumulated in compute dtype."""

    def __init__(self, spec: _Spec, u, delta, A, B, C, D, z, delta_bias, dest=None):
        self.spec = spec
        self.inputs = (u, delta, A, B, C, D, z, delta_bias)
        if dest is not None:  # (du, ddelta, dz) views of the whole call's buffers (one channel slice)
            self.du, self.ddelta, self.dz = dest
        else:
            self.du, self.ddelta = torch.empty_like(u), torch.empty_like(delta)
            self.dz = torch.empty_like(z) if z is not None else None
        acc = dict(dtype=spec.dtype, device=u.device)
        self.dA = torch.zeros(spec.groups, spec.per_group, spec.nstate, **acc)
        self.dD = torch.zeros(spec.dim, **acc) if D is not None else None
        self.dbias = torch.zeros(spec.dim, **acc) if delta_bias is not None else None
        self.dB = torch.zeros(B.shape, **acc) if spec.b_layout == "shared" else torch.empty_like(B)
        self.dC = torch.zeros(C.shape, **acc) if spec.c_layout == "shared" else torch.empty_like(C)

    def add_bc(self, which: str, grad5: torch.Tensor, t0: int, t1: int) -> None:
        layout = self.spec.b_layout if which == "B" else self.spec.c_layout
        X, buf = (self.inputs[3], self.dB) if which == "B" else (self.inputs[4], self.dC)
        red = _bc_reduce(grad5, layout, X, self.spec, t1 - t0)
        if layout == "shared":
            buf += red
        else:
            buf[..., t0:t1] = red

    def result(self, dh0):
        u, delta, A, B, C, D, z, delta_bias = self.inputs

        def cast(t, like):
            return None if like is None else t.to(like.dtype)

        return (self.du, self.ddelta, cast(self.dA.flatten(0, 1), A), cast(self.dB, B), cast(self.dC, C),
                cast(self.dD, D), self.dz, cast(self.dbias, delta_bias),
                None if dh0 is None else dh0.flatten(1, 2))


def _chunk_backward(ch: _Chunk, h0, carry, dout, grads: _Grads, u, D, z, softplus: bool) -> torch.Tensor:
    """Accumulate one chunk's gradients; ``carry`` is dL/d(last state of the chunk). Returns dL/d(h0)."""
    spec, dt, (t0, t1, n, T) = grads.spec, grads.spec.dtype, (ch.t0, ch.t1, ch.n, ch.T)
    decay = ch.decay()
    hs = _states(ch, h0, decay.clone())
    u_c = u[..., t0:t1].to(dt)
    _, pre_gate, zc = _gate(_readout(hs, ch.C, n), u_c, D, z, t0, t1, dt)
    dy = dout[..., t0:t1].to(dt)
    if zc is not None:  # d silu(z)/dz = s (1 + z (1 - s)) with s = sigmoid(z)
        sz = torch.sigmoid(zc)
        grads.dz[..., t0:t1] = dy * pre_gate * sz * (1 + zc * (1 - sz))
        dy = dy * zc * sz
    if D is not None:
        grads.dD += (dy * u_c).sum(dim=(0, 2))
    dy_tm = _time_major(dy, dt, T).unflatten(2, (spec.groups, spec.per_group))  # (T, b, g, k)
    # adjoint: dL/dh_t = C_t dy_t + exp(Δ_{t+1} A) dL/dh_{t+1}, a reverse scan
    gh = dy_tm[..., None] * ch.C
    gh[n - 1] += carry
    nxt = torch.empty_like(decay)
    nxt[:-1] = decay[1:]
    nxt[-1] = 0
    gh = _scan_(nxt, gh, reverse=True)
    g_logdecay = torch.cat([h0[None], hs[:-1]]).mul_(gh).mul_(decay)  # dL/d(Δ_t A) = dL/dh_t h_{t-1} e^{Δ_t A}
    s = (gh * ch.B).sum(dim=-1)  # Σ_n dL/dh_t B_t, (T, b, g, k)
    ddelta = ch.u * s + (g_logdecay * ch.A).sum(dim=-1)
    du = (ch.delta * s)[:n].flatten(2, 3).permute(1, 2, 0)
    grads.du[..., t0:t1] = du + dy * D.to(dt)[:, None] if D is not None else du
    grads.dA += (g_logdecay * ch.delta[..., None]).sum(dim=(0, 1))
    grads.add_bc("B", gh * (ch.delta * ch.u)[..., None], t0, t1)
    grads.add_bc("C", hs * dy_tm[..., None], t0, t1)
    ddelta = ddelta[:n]
    if softplus:
        ddelta = ddelta * torch.where(ch.pre > SOFTPLUS_THRESHOLD, 1.0, torch.sigmoid(ch.pre))
    if grads.dbias is not None:
        grads.dbias += ddelta.sum(dim=(0, 1)).flatten()
    grads.ddelta[..., t0:t1] = ddelta.flatten(2, 3).permute(1, 2, 0)
    return gh[0] * decay[0]

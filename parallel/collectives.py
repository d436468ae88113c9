"""Autograd-aware collectives for sequence parallelism, and a counter of the bytes they send (DESIGN §7).

Each collective is a small ``torch.autograd.Function`` whose backward is the reverse collective, so gradients
flow back across ranks with the same traffic as the forward. All take an explicit process group (the
sequence-parallel group of a :class:`parallel.ParallelDims`) and a ``tag`` naming the caller (a module path
such as ``"layers.0.mixer"``) for the byte counter. Legend: ``P`` ranks in the group, ``r`` this rank's index,
``B`` batch, ``Ls`` this rank's slice of the sequence, ``L = P * Ls``, ``C`` channels.

====================================  ============================  ==========================================
function                               forward                       backward
====================================  ============================  ==========================================
:func:`seq_to_channel`                 (B, Ls, C) -> (B, L, C/P)     channel -> sequence all-to-all
:func:`channel_to_seq`                 (B, L, C/P) -> (B, Ls, C)     sequence -> channel all-to-all
:func:`halo_exchange`                  (B, Ls, C) -> (B, w+Ls, C)    the halo's gradient goes back to rank r-1
:func:`all_gather_stack`               x -> (P, *x.shape)            reduce-scatter (an all-to-all, then a sum)
====================================  ============================  ==========================================

Bytes sent by this rank per call (``e`` = bytes per element; the counter records exactly these)::

    all-to-all of a tensor of n elements   n * (P-1)/P * e      (the chunk that stays local is not sent)
    halo of width w                         w * B * C * e        (forward: ranks 0..P-2; backward: ranks 1..P-1)
    all-gather of n elements                n * (P-1) * e        (backward: the same, as a reduce-scatter)

:func:`count_bytes` opens a :class:`CommCounter` that records every call made while it is open (including the
recomputation of checkpointed blocks, and the Ulysses all-to-alls that :mod:`parallel.mixers` accounts for).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

import torch
import torch.distributed as dist

FORWARD, BACKWARD = "forward", "backward"


class CommCounter:
    """Bytes this rank sent, keyed by ``(tag, kind, direction)``; ``kind`` is the collective's name
    (``"all_to_all"``, ``"halo"``, ``"all_gather"``, ``"ulysses_all_to_all"``), ``direction`` forward/backward."""

    def __init__(self) -> None:
        self.records: Counter = Counter()
        self.calls: Counter = Counter()

    def add(self, tag: str, kind: str, direction: str, nbytes: int) -> None:
        self.records[(tag, kind, direction)] += int(nbytes)
        self.calls[(tag, kind, direction)] += 1

    def total(self, tag: str | None = None, kind: str | None = None, direction: str | None = None) -> int:
        """Bytes sent, summed over the records that match every given key."""
        def match(key, value):
            return value is None or key == value

        return sum(n for (t, k, d), n in self.records.items()
                   if match(t, tag) and match(k, kind) and match(d, direction))

    def per_tag(self, direction: str | None = None) -> dict[str, int]:
        """``{tag: bytes}`` (e.g. per layer), optionally for one direction."""
        out: Counter = Counter()
        for (t, _, d), n in self.records.items():
            if direction is None or d == direction:
                out[t] += n
        return dict(out)

    def reset(self) -> None:
        self.records.clear()
        self.calls.clear()


_listeners: list[CommCounter] = []


@contextlib.contextmanager
def count_bytes() -> Iterator[CommCounter]:
    """Record the bytes every sequence-parallel collective of this process sends while the block runs::

        with parallel.count_bytes() as sent:
            loss = sp_loss(model(x)); loss.backward()
        sent.per_tag("forward")      # {"layers.0.mixer": bytes, ...}
    """
    counter = CommCounter()
    _listeners.append(counter)
    try:
        yield counter
    finally:
        _listeners.remove(counter)


def record(tag: str, kind: str, direction: str, nbytes: int) -> None:
    """Add ``nbytes`` to every open counter."""
    for counter in _listeners:
        counter.add(tag, kind, direction, nbytes)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _world(group) -> tuple[int, int]:
    return dist.get_world_size(group), dist.get_rank(group)


# ---------------------------------------------------------------------------------------------------------
# sequence <-> channel all-to-all


def _a2a(buf: torch.Tensor, group, tag: str, direction: str, kind: str = "all_to_all") -> torch.Tensor:
    """All-to-all of ``buf`` (P, ...): chunk j goes to rank j; returns (P, ...) with chunk i from rank i."""
    P = buf.shape[0]
    out = torch.empty_like(buf)
    dist.all_to_all_single(out, buf, group=group)
    record(tag, kind, direction, _nbytes(buf) * (P - 1) // P)
    return out


def _seq_to_channel(x: torch.Tensor, group, tag: str, direction: str) -> torch.Tensor:
    P, _ = _world(group)
    B, Ls, C = x.shape
    buf = x.reshape(B, Ls, P, C // P).permute(2, 0, 1, 3).contiguous()  # (P, B, Ls, C/P): channel chunk j -> j
    out = _a2a(buf, group, tag, direction)  # (P, B, Ls, C/P): sequence slice i of my channel chunk, from i
    return out.permute(1, 0, 2, 3).reshape(B, P * Ls, C // P)


def _channel_to_seq(y: torch.Tensor, group, tag: str, direction: str) -> torch.Tensor:
    P, _ = _world(group)
    B, L, Cp = y.shape
    buf = y.reshape(B, P, L // P, Cp).permute(1, 0, 2, 3).contiguous()  # (P, B, Ls, C/P): slice j -> rank j
    out = _a2a(buf, group, tag, direction)  # (P, B, Ls, C/P): channel chunk i of my slice, from rank i
    return out.permute(1, 2, 0, 3).reshape(B, L // P, P * Cp)


class _SeqToChannel(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, tag):
        ctx.group, ctx.tag = group, tag
        return _seq_to_channel(x, group, tag, FORWARD)

    @staticmethod
    def backward(ctx, dy):
        return _channel_to_seq(dy, ctx.group, ctx.tag, BACKWARD), None, None


class _ChannelToSeq(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, group, tag):
        ctx.group, ctx.tag = group, tag
        return _channel_to_seq(y, group, tag, FORWARD)

    @staticmethod
    def backward(ctx, dx):
        return _seq_to_channel(dx, ctx.group, ctx.tag, BACKWARD), None, None


def seq_to_channel(x: torch.Tensor, group, tag: str = "") -> torch.Tensor:
    """All-to-all from sequence shards to channel shards: ``x`` (B, Ls, C), this rank's slice of the sequence,
    to (B, P*Ls, C/P), the whole sequence for this rank's channels ``[r*C/P, (r+1)*C/P)``. C must divide by P."""
    P, _ = _world(group)
    if x.dim() != 3 or x.shape[2] % P:
        raise ValueError(f"seq_to_channel: x must be (batch, length, channels) with channels divisible by the "
                         f"sequence-parallel degree {P}, got {tuple(x.shape)}")
    return _SeqToChannel.apply(x, group, tag)


def channel_to_seq(y: torch.Tensor, group, tag: str = "") -> torch.Tensor:
    """The inverse of :func:`seq_to_channel`: (B, L, C/P) channel shard -> (B, L/P, P*C/P) sequence slice."""
    P, _ = _world(group)
    if y.dim() != 3 or y.shape[1] % P:
        raise ValueError(f"channel_to_seq: y must be (batch, length, channels) with length divisible by the "
                         f"sequence-parallel degree {P}, got {tuple(y.shape)}")
    return _ChannelToSeq.apply(y, group, tag)


# ---------------------------------------------------------------------------------------------------------
# halo exchange


def _shift_to_next(t: torch.Tensor, group, tag: str, direction: str, backwards: bool) -> torch.Tensor | None:
    """Send ``t`` to rank r+1 and receive rank r-1's (or, with ``backwards``, to r-1 from r+1). Returns what
    was received, ``None`` at the end of the chain that has no sender."""
    P, r = _world(group)
    dst, src = (r - 1, r + 1) if backwards else (r + 1, r - 1)
    works, received = [], None
    if 0 <= src < P:
        received = torch.empty_like(t)
        works.append(dist.irecv(received, src=dist.get_global_rank(group, src), group=group))
    if 0 <= dst < P:
        works.append(dist.isend(t.contiguous(), dst=dist.get_global_rank(group, dst), group=group))
        record(tag, "halo", direction, _nbytes(t))
    for work in works:
        work.wait()
    return received


class _Halo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, width, group, tag):
        ctx.width, ctx.group, ctx.tag = width, group, tag
        Ls = x.shape[1]
        halo = _shift_to_next(x[:, Ls - width:], group, tag, FORWARD, backwards=False)
        if halo is None:  # rank 0: the zeros of causal left padding
            halo = x.new_zeros(x.shape[0], width, *x.shape[2:])
        return torch.cat([halo, x], dim=1)

    @staticmethod
    def backward(ctx, dy):
        w = ctx.width
        dx = dy[:, w:].clone()
        from_next = _shift_to_next(dy[:, :w], ctx.group, ctx.tag, BACKWARD, backwards=True)
        if from_next is not None:
            dx[:, dx.shape[1] - w:] += from_next
        return dx, None, None, None


def halo_exchange(x: torch.Tensor, width: int, group, tag: str = "") -> torch.Tensor:
    """Prepend the last ``width`` positions of the previous rank's slice (zeros on rank 0) to ``x`` (B, Ls, ...)
    along dim 1: a causal convolution of ``width + 1`` taps on the result, cut to its last Ls outputs, equals
    that rank's slice of the convolution of the whole sequence. The backward sends the halo's gradient back to
    the rank it came from, which adds it to its last ``width`` positions."""
    if width < 0 or x.dim() < 2 or x.shape[1] < width:
        raise ValueError(f"halo_exchange: each rank's slice must hold at least width={width} positions along "
                         f"dim 1, got shape {tuple(x.shape)}: use longer windows or a smaller sequence-parallel "
                         f"degree")
    if width == 0:
        return x
    return _Halo.apply(x, width, group, tag)


# ---------------------------------------------------------------------------------------------------------
# all-gather of small per-rank states


class _AllGatherStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, tag):
        ctx.group, ctx.tag = group, tag
        P, _ = _world(group)
        out = x.new_empty(P, *x.shape)
        dist.all_gather(list(out.unbind(0)), x.contiguous(), group=group)
        record(tag, "all_gather", FORWARD, _nbytes(x) * (P - 1))
        return out

    @staticmethod
    def backward(ctx, dout):
        # reduce-scatter: rank i's gradient for my x is dout[my rank] on rank i; gloo has no reduce_scatter,
        # so an all-to-all (chunk j to rank j) then a sum over the senders.
        pieces = _a2a(dout.contiguous(), ctx.group, ctx.tag, BACKWARD, kind="all_gather")
        return pieces.sum(dim=0), None, None


def all_gather_stack(x: torch.Tensor, group, tag: str = "") -> torch.Tensor:
    """Every rank's ``x`` stacked in rank order: (P, *x.shape). The backward is a reduce-scatter: each rank's
    ``x`` receives the sum of the gradients that every rank's use of it produced."""
    return _AllGatherStack.apply(x, group, tag)

"""How windows are cut from chunks and dealt to ranks: pure functions of (seed, epoch, layout).

Cutting (per sample = one chunk of the manifest, ``n`` bases, window length ``L``): a window needs ``L + 1``
bases (inputs plus the shifted targets) and consecutive windows share one base, so a sample holds
``(n - 1) // L`` windows; they tile it from a random phase in ``[0, (n - 1) % L]`` drawn per sample and epoch
(phase 0 without shuffling), so the few bases left over move every epoch. A sample shorter than ``L + 1``
(the end of a region) gives one window padded on the right; a sample of one base gives none.

Dealing: the ``T`` windows of an epoch are permuted with a generator seeded by ``(seed, epoch)`` (identity
without shuffling). Global batch ``g = b * dp_size + dp_rank`` takes permuted positions
``[g * B, (g + 1) * B)``, so every rank gets ``T // (dp_size * B)`` batches and no window twice. The
remainder of ``T mod (dp_size * B)`` windows is not dealt in that epoch (a different random set each epoch,
counted in :meth:`EpochPlan.stats`); with ``drop_remainder=False`` (finite evaluation passes) the last
batches are filled up with empty rows instead (all padding, loss mask 0), so every window is seen once.
Reverse-complement flips are drawn per global batch from ``(seed, epoch, g)``: the same on every rank of a
sequence-parallel group and independent of loader workers.
"""

from __future__ import annotations

import numpy as np

_PERM, _PHASE, _RC = 0, 1, 2  # independent generator streams per (seed, epoch)


def windows_per_sample(lengths: np.ndarray, seq_len: int) -> np.ndarray:
    """Windows of length ``seq_len`` in samples of ``lengths`` bases (short samples give one padded window)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    full = (lengths - 1) // seq_len
    return np.where(full >= 1, full, (lengths >= 2).astype(np.int64))


def batches_per_rank(num_windows: int, micro_batch: int, dp_size: int, drop_remainder: bool) -> int:
    """Batches every data-parallel rank yields per epoch."""
    per_step = micro_batch * dp_size
    return num_windows // per_step if drop_remainder else -(-num_windows // per_step)


class EpochPlan:
    """The windows of one epoch and which rank/batch/row each goes to."""

    def __init__(self, lengths: np.ndarray, *, seq_len: int, micro_batch: int, dp_size: int, seed: int, epoch: int,
                 shuffle: bool = True, drop_remainder: bool = True):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.seq_len, self.micro_batch, self.dp_size = seq_len, micro_batch, dp_size
        self.seed, self.epoch = seed, epoch
        counts = windows_per_sample(self.lengths, seq_len)
        self.cum = np.concatenate(([0], np.cumsum(counts)))
        self.num_windows = int(self.cum[-1])
        self.batches = batches_per_rank(self.num_windows, micro_batch, dp_size, drop_remainder)
        full = self.lengths - 1 >= seq_len
        self.slack = np.where(full, self.lengths - 1 - counts * seq_len, 0)
        if shuffle:
            # int32 halves the memory of short windows over a whole genome (3 G bases / 128 = 24 M windows)
            dtype = np.int32 if self.num_windows < 2**31 else np.int64
            self.order = np.arange(self.num_windows, dtype=dtype)
            np.random.default_rng([seed, epoch, _PERM]).shuffle(self.order)
            self.phase = np.random.default_rng([seed, epoch, _PHASE]).integers(0, self.slack + 1)
        else:
            self.order = None
            self.phase = np.zeros_like(self.lengths)

    def rows(self, dp_rank: int, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(sample, start, avail)`` per row of ``batch`` on ``dp_rank``.

        ``sample`` is -1 for a filler row; ``start`` is the window's first base within the sample and
        ``avail`` how many of its ``seq_len + 1`` bases exist (fewer for a padded window).
        """
        if not 0 <= batch < self.batches:
            raise IndexError(f"batch {batch} outside [0, {self.batches})")
        g = batch * self.dp_size + dp_rank
        pos = np.arange(g * self.micro_batch, (g + 1) * self.micro_batch)
        real = pos < self.num_windows
        w = pos[real] if self.order is None else self.order[pos[real]]
        s = np.searchsorted(self.cum, w, side="right") - 1
        start = self.phase[s] + (w - self.cum[s]) * self.seq_len
        sample = np.full(self.micro_batch, -1, dtype=np.int64)
        starts = np.zeros(self.micro_batch, dtype=np.int64)
        avail = np.zeros(self.micro_batch, dtype=np.int64)
        sample[real], starts[real] = s, start
        avail[real] = np.minimum(self.seq_len + 1, self.lengths[s] - start)
        return sample, starts, avail

    def rc_flags(self, dp_rank: int, batch: int, prob: float) -> np.ndarray:
        """Which rows of a batch are reverse-complemented (same on all sequence-parallel ranks)."""
        if prob <= 0:
            return np.zeros(self.micro_batch, dtype=bool)
        g = batch * self.dp_size + dp_rank
        return np.random.default_rng([self.seed, self.epoch, _RC, g]).random(self.micro_batch) < prob

    def stats(self) -> dict:
        """Counts of this epoch: windows, dealt, not dealt (remainder), filler rows, padded, unused bases."""
        dealt_rows = self.batches * self.dp_size * self.micro_batch
        counts = np.diff(self.cum)
        return {
            "windows": self.num_windows,
            "windows_dealt": min(dealt_rows, self.num_windows),
            "windows_not_dealt": max(0, self.num_windows - dealt_rows),
            "filler_rows": max(0, dealt_rows - self.num_windows),
            "padded_windows": int(((self.lengths - 1 < self.seq_len) & (counts > 0)).sum()),
            "unused_bases": int(self.slack.sum() + self.lengths[counts == 0].sum()),
        }

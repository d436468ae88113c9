"""The loader-worker side of :class:`pretrain.data.WindowStream`: batches of window bytes.

Workers send compact ``uint8`` rows (the ASCII bases of this rank's slice of each window, reverse-complemented
where drawn, right-padded with byte 0) and the main process turns them into int64 ids, labels and the float
loss mask with three table look-ups. Moving 20 bytes per token (int64 + int64 + float32) through the
DataLoader's shared memory costs far more than the look-ups; moving 1 byte does not.

Worker ``w`` of ``W`` computes the batches at stream positions ``start + w, start + w + W, ...``; the
DataLoader collects workers round-robin in order, so the caller sees positions ``start, start + 1, ...``
whatever the number of workers. Shard files are opened lazily inside each worker (never shared across fork).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from data_prep.format import Manifest, SampleRef, ShardReader
from models.tokenizer import complement_byte_table
from pretrain.data_plan import EpochPlan

PAD_BYTE = 0  # marks padding in window rows; never a FASTA byte
_COMPLEMENT = complement_byte_table()


class WindowSource(IterableDataset):
    """Yields ``{"raw": uint8 [micro_batch, seq_len // sp_size + 1]}`` (+ ``"windows"``) per stream position."""

    def __init__(self, manifest: Manifest, samples: list[SampleRef], *, seq_len: int, micro_batch: int,
                 dp_rank: int, dp_size: int, sp_rank: int, sp_size: int, seed: int, shuffle: bool,
                 drop_remainder: bool, rc_prob: float, batches_per_epoch: int, start: int, stop: int | None,
                 return_windows: bool = False):
        super().__init__()
        self.reader = ShardReader(manifest)
        self.samples = samples
        self.lengths = np.array([s.length for s in samples], dtype=np.int64)
        self.seq_len, self.micro_batch = seq_len, micro_batch
        self.dp_rank, self.dp_size, self.sp_rank, self.sp_size = dp_rank, dp_size, sp_rank, sp_size
        self.seed, self.shuffle, self.drop_remainder, self.rc_prob = seed, shuffle, drop_remainder, rc_prob
        self.batches_per_epoch, self.start, self.stop = batches_per_epoch, start, stop
        self.return_windows = return_windows
        self._plan: EpochPlan | None = None

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch`` (kept while consecutive batches stay in that epoch)."""
        if self._plan is None or self._plan.epoch != epoch:
            self._plan = EpochPlan(self.lengths, seq_len=self.seq_len, micro_batch=self.micro_batch,
                                   dp_size=self.dp_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                   drop_remainder=self.drop_remainder)
        return self._plan

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        first = self.start + worker
        positions = itertools.count(first, workers) if self.stop is None else range(first, self.stop, workers)
        for pos in positions:
            yield self.batch(*divmod(pos, self.batches_per_epoch))

    def batch(self, epoch: int, index: int) -> dict:
        """Window bytes of batch ``index`` of ``epoch`` for this rank."""
        plan = self.plan(epoch)
        sample, start, avail = plan.rows(self.dp_rank, index)
        rc = plan.rc_flags(self.dp_rank, index, self.rc_prob)
        width = self.seq_len // self.sp_size
        raw = torch.empty((self.micro_batch, width + 1), dtype=torch.uint8)
        rows = raw.numpy()
        lo = self.sp_rank * width  # this rank's slice of the window (+1 base for the last target)
        for i in range(self.micro_batch):
            self._fill(rows[i], int(sample[i]), int(start[i]), int(avail[i]), bool(rc[i]), lo)
        out = {"raw": raw}
        if self.return_windows:
            out["windows"] = torch.from_numpy(np.stack([sample, start, avail, rc.astype(np.int64)], axis=1))
        return out

    def _fill(self, row: np.ndarray, sample: int, start: int, avail: int, rc: bool, lo: int) -> None:
        """Row = window positions ``[lo, lo + len(row))``, where the window is ``avail`` bases (reverse-
        complemented when ``rc``) followed by padding."""
        hi = min(lo + len(row), avail)
        n = max(0, hi - lo)
        if n:
            ref = self.samples[sample]
            if rc:  # RC position x is the complement of original position avail - 1 - x
                data = self.reader.read(ref, start + avail - hi, start + avail - lo)
                row[:n] = _COMPLEMENT[np.frombuffer(data, dtype=np.uint8)[::-1]]
            else:
                row[:n] = np.frombuffer(self.reader.read(ref, start + lo, start + hi), dtype=np.uint8)
        row[n:] = PAD_BYTE

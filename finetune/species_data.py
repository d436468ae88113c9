"""The species-classification stream: fixed-length windows of a species task (``python -m data_prep species``).

One :class:`SpeciesStream` yields the batches of ONE data-parallel rank::

    {"input_ids":      int64 [micro_batch, seq_len]   token ids (models.tokenizer), [PAD] on filler rows
     "labels":         int64 [micro_batch]            species label id, -100 on filler rows
     "attention_mask": bool  [micro_batch, seq_len]   True on real bases, all False on filler rows}

How windows are chosen
    Window ``i`` of epoch ``e`` is drawn from a generator seeded with ``(seed, epoch, i)`` only: first a species,
    uniformly, then a start uniformly among the valid starts of that species' split. A valid start keeps the whole
    window inside one *segment*: a run of consecutive samples of the split that are contiguous on one record.
    Segments never cross a region or split boundary (prep cuts samples inside each split's regions), so no base of
    another split is ever inside a window: in particular no test base is inside a train window. Windows may
    span the chunk boundaries inside a segment (they are read from both samples), so every start of a region is
    reachable at every length up to the region length.

Windows with too many N
    A window whose fraction of non-A/C/G/T bases exceeds ``max_n_frac`` (default 0.5, the threshold ``data_prep``
    applies to whole chunks) carries almost no species signal; its start is redrawn from the same generator (the
    species is kept, so classes stay balanced), at most ``MAX_REDRAWS`` times, and every redraw is counted in
    :meth:`stats`. Being drawn from the window's own generator, redraws keep the stream deterministic.

Batches and ranks
    Rank ``r``'s batch ``b`` holds windows ``(b * dp_size + r) * micro_batch + j``, ``j < micro_batch``.
    *Training* (``epochs=None``, endless): an epoch has ``batches_per_epoch`` batches per rank (default: as many
    windows in all as tile every species' split once, divided over the ranks). *Finite passes* (``epochs=k``, e.g.
    evaluation with ``epochs=1``): an epoch is a fixed set of ``W`` windows, ``W = batches_per_epoch * micro_batch``
    (``batches_per_epoch`` counts batches of a one-rank pass) or by default the tiling count above, independent of
    ``dp_size``; each rank yields ``ceil(W / (micro_batch * dp_size))`` batches and rows past ``W`` are filler rows
    (label -100, attention all False). So the union of what all ranks score is the same ``W`` windows for any
    number of ranks.

Reverse-complement augmentation: with probability ``rc_prob`` a window is read on the minus strand (drawn from
the window's generator). :meth:`state_dict` / :meth:`load_state_dict` resume exactly: a resumed stream yields
the same batches as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from data_prep.format import SampleRef, ShardReader, load_manifest
from data_prep.species import load_task
from models.tokenizer import PAD_ID, byte_to_id_table, complement_byte_table

STATE_FORMAT = "longdna-species-stream"
STATE_VERSION = 1
IGNORE_LABEL = -100  # torch.nn.functional.cross_entropy's default ignore_index
MAX_REDRAWS = 100


@dataclass
class _Segment:
    """Consecutive samples of one split that are contiguous on one record."""

    chrom: str
    start: int
    samples: list[SampleRef]
    offsets: list[int]  # offset of each sample's first base within the segment

    @property
    def length(self) -> int:
        return self.offsets[-1] + self.samples[-1].length


def _segments(samples: list[SampleRef]) -> list[_Segment]:
    out: list[_Segment] = []
    for s in samples:
        last = out[-1] if out else None
        if last is not None and last.chrom == s.chrom and last.start + last.length == s.start:
            last.offsets.append(last.length)
            last.samples.append(s)
        else:
            out.append(_Segment(s.chrom, s.start, [s], [0]))
    return out


class _Species:
    """One species' split: its segments, reader and the cumulative counts of valid window starts."""

    def __init__(self, name: str, label: int, shard_dir: Path, split: str):
        self.name, self.label = name, label
        self.manifest = load_manifest(shard_dir)
        self.reader = ShardReader(self.manifest)
        self.segments = _segments(self.manifest.samples(split))
        self.bases = sum(seg.length for seg in self.segments)

    def layout(self, seq_len: int) -> np.ndarray:
        """Cumulative number of valid starts over the segments (``[0, n_0, n_0 + n_1, ...]``)."""
        starts = [max(0, seg.length - seq_len + 1) for seg in self.segments]
        return np.concatenate([[0], np.cumsum(starts, dtype=np.int64)])

    def read(self, seg: _Segment, start: int, stop: int) -> bytes:
        """Bases ``[start, stop)`` of a segment, read from every sample it overlaps."""
        parts = []
        k = bisect.bisect_right(seg.offsets, start) - 1
        while start < stop:
            sample, base = seg.samples[k], seg.offsets[k]
            end = min(stop, base + sample.length)
            parts.append(self.reader.read(sample, start - base, end - base))
            start, k = end, k + 1
        return b"".join(parts)


class SpeciesStream:
    """Batches of species-labelled windows for one data-parallel rank (see the module docstring)."""

    def __init__(self, task_dir, split: str, seq_len: int, micro_batch: int, seed: int = 0, dp_rank: int = 0,
                 dp_size: int = 1, rc_prob: float = 0.0, epochs: int | None = None,
                 batches_per_epoch: int | None = None, *, max_n_frac: float = 0.5, return_windows: bool = False):
        _check(isinstance(seed, int) and seed >= 0, f"seed must be an integer >= 0, got {seed!r}")
        _check(0 <= dp_rank < dp_size, f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        _check(seq_len >= 1 and micro_batch >= 1, f"seq_len and micro_batch must be >= 1, got {seq_len}, {micro_batch}")
        _check(0.0 <= rc_prob <= 1.0, f"rc_prob is a probability in [0, 1], got {rc_prob}")
        _check(0.0 <= max_n_frac <= 1.0, f"max_n_frac is a fraction in [0, 1], got {max_n_frac}")
        _check(epochs is None or epochs >= 1, f"epochs must be None (endless) or >= 1, got {epochs}")
        _check(batches_per_epoch is None or batches_per_epoch >= 1,
               f"batches_per_epoch must be None or >= 1, got {batches_per_epoch}")
        self.task_dir = Path(task_dir)
        self.task = load_task(self.task_dir)
        _check(split in self.task["splits"], f"task {self.task_dir} has no split {split!r}; it has "
               f"{', '.join(self.task['splits'])}")
        self.split, self.seq_len, self.micro_batch = split, seq_len, micro_batch
        self.seed, self.dp_rank, self.dp_size, self.rc_prob, self.epochs = seed, dp_rank, dp_size, rc_prob, epochs
        self.max_n_frac, self.return_windows = max_n_frac, return_windows
        by_label = sorted(self.task["species"], key=lambda s: s["label"])
        self.species = [_Species(s["name"], s["label"], self.task_dir / s["shards"], split) for s in by_label]
        self._starts = [sp.layout(seq_len) for sp in self.species]
        for sp, starts in zip(self.species, self._starts):
            longest = max((seg.length for seg in sp.segments), default=0)
            _check(starts[-1] > 0, f"species {sp.name!r} has no window of {seq_len} bases in split {split!r} of "
                   f"{self.task_dir}: its longest contiguous stretch is {longest} bases; use a shorter seq_len or "
                   "hold out more sequence")
        tiling = sum(sum(seg.length // seq_len for seg in sp.segments) for sp in self.species)
        if epochs is None:
            self.batches_per_rank = batches_per_epoch or max(1, math.ceil(tiling / (micro_batch * dp_size)))
            self.windows_per_epoch = self.batches_per_rank * micro_batch * dp_size
        else:
            self.windows_per_epoch = batches_per_epoch * micro_batch if batches_per_epoch else max(1, tiling)
            self.batches_per_rank = math.ceil(self.windows_per_epoch / (micro_batch * dp_size))
        self._ids = byte_to_id_table(np.int64)
        self._complement = complement_byte_table()
        self._acgt = np.zeros(256, dtype=bool)
        self._acgt[np.frombuffer(b"ACGTacgt", dtype=np.uint8)] = True
        self._epoch = self._batch = 0
        self._redraws = self._windows_drawn = 0

    # -- task ------------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.species)

    @property
    def class_names(self) -> list[str]:
        """Species names in label order."""
        return [sp.name for sp in self.species]

    @property
    def epoch(self) -> int:
        """Epoch of the next batch to be yielded."""
        return self._epoch

    def stats(self) -> dict:
        """Layout and counters of this stream (windows drawn and N redraws since construction)."""
        return {"split": self.split, "seq_len": self.seq_len, "batches_per_rank": self.batches_per_rank,
                "windows_per_epoch": self.windows_per_epoch, "windows_drawn": self._windows_drawn,
                "n_redraws": self._redraws,
                "valid_starts": {sp.name: int(st[-1]) for sp, st in zip(self.species, self._starts)}}

    # -- windows ---------------------------------------------------------------------------------------
    def window(self, epoch: int, index: int) -> tuple[str, str, int, int, bool]:
        """Window ``index`` of ``epoch`` as ``(species, chrom, start, end, reverse-complemented)`` in genome
        coordinates (0-based, half-open); a pure function of ``(seed, epoch, index)``."""
        k, seg, start, rc, _ = self._draw(epoch, index)
        sp, segment = self.species[k], self.species[k].segments[seg]
        return sp.name, segment.chrom, segment.start + start, segment.start + start + self.seq_len, rc

    def _draw(self, epoch: int, index: int) -> tuple[int, int, int, bool, bytes]:
        rng = np.random.default_rng([self.seed, epoch, index])
        k = int(rng.integers(len(self.species)))
        sp, starts = self.species[k], self._starts[k]
        for _ in range(MAX_REDRAWS + 1):
            pos = int(rng.integers(starts[-1]))
            seg = int(np.searchsorted(starts, pos, side="right")) - 1
            start = pos - int(starts[seg])
            rc = bool(rng.random() < self.rc_prob)
            data = sp.read(sp.segments[seg], start, start + self.seq_len)
            acgt = int(np.count_nonzero(self._acgt[np.frombuffer(data, dtype=np.uint8)]))
            if self.seq_len - acgt <= self.max_n_frac * self.seq_len:
                return k, seg, start, rc, data
            self._redraws += 1
        raise ValueError(f"species {sp.name!r}, split {self.split!r}: {MAX_REDRAWS + 1} windows of {self.seq_len} "
                         f"bases in a row had more than max_n_frac={self.max_n_frac} N; the split is mostly N: "
                         "raise max_n_frac or hold out other sequence")

    def _row(self, epoch: int, index: int, ids_out: np.ndarray) -> tuple:
        k, seg, start, rc, data = self._draw(epoch, index)
        self._windows_drawn += 1
        raw = np.frombuffer(data, dtype=np.uint8)
        if rc:
            raw = self._complement[raw[::-1]]
        np.take(self._ids, raw, out=ids_out)
        sp = self.species[k]
        segment = sp.segments[seg]
        return sp.label, (sp.name, segment.chrom, segment.start + start, segment.start + start + self.seq_len, rc)

    def _batch_at(self, epoch: int, batch: int) -> dict:
        B, L = self.micro_batch, self.seq_len
        # numpy buffers wrapped at the end: filling torch tensors row by row costs more than the reads
        ids = np.full((B, L), PAD_ID, dtype=np.int64)
        labels = np.full((B,), IGNORE_LABEL, dtype=np.int64)
        real = np.zeros((B,), dtype=bool)
        windows = []
        for j in range(B):
            index = (batch * self.dp_size + self.dp_rank) * B + j
            if index >= self.windows_per_epoch:
                windows.append(None)
                continue
            labels[j], where = self._row(epoch, index, ids[j])
            real[j] = True
            windows.append(where)
        mask = np.broadcast_to(real[:, None], (B, L)).copy()
        out = {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
               "attention_mask": torch.from_numpy(mask)}
        if self.return_windows:
            out["windows"] = windows  # (species, chrom, start, end, reverse-complemented) or None for filler
        return out

    # -- iteration and resume --------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict]:
        """Batches from the current position on; a finite stream whose passes are complete starts over."""
        if self.epochs is not None and self._epoch >= self.epochs:
            self._epoch = self._batch = 0
        while self.epochs is None or self._epoch < self.epochs:
            batch = self._batch_at(self._epoch, self._batch)
            self._batch += 1
            if self._batch == self.batches_per_rank:
                self._epoch, self._batch = self._epoch + 1, 0
            yield batch

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return self.batches_per_rank

    def state_dict(self) -> dict:
        """Position and layout; the same on every rank (saving rank 0's is enough)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "task": self._fingerprint(), "split": self.split,
                "seed": self.seed, "dp_size": self.dp_size, "seq_len": self.seq_len, "micro_batch": self.micro_batch,
                "rc_prob": self.rc_prob, "max_n_frac": self.max_n_frac, "windows_per_epoch": self.windows_per_epoch,
                "epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuses a state of another task / seed / layout."""
        _check(state.get("format") == STATE_FORMAT and state.get("version") == STATE_VERSION,
               f"not a SpeciesStream state of version {STATE_VERSION}: {state.get('format')!r} "
               f"v{state.get('version')!r}")
        mine = self.state_dict()
        for key in ("task", "split", "seed", "dp_size", "seq_len", "micro_batch", "rc_prob", "max_n_frac",
                    "windows_per_epoch"):
            _check(state.get(key) == mine[key], f"loader state has {key}={state.get(key)!r} but this stream has "
                   f"{mine[key]!r}; resuming would not reproduce the same batches (use the same task, seed and layout)")
        _check(0 <= state["batch"] < self.batches_per_rank, f"loader state batch {state['batch']} outside an epoch "
               f"of {self.batches_per_rank} batches")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def _fingerprint(self) -> str:
        return hashlib.sha256("".join(sp.manifest.fingerprint for sp in self.species).encode()).hexdigest()

    def close(self) -> None:
        for sp in self.species:
            sp.reader.close()


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)

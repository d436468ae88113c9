"""The training stream (DESIGN §4): windows of the current length cut from prepared shards at load time.

One :class:`WindowStream` yields the batches of ONE rank::

    {"input_ids": int64 [micro_batch, seq_len // sp_size],
     "labels":    int64 [micro_batch, seq_len // sp_size],     # input shifted by one base
     "loss_mask": float32 [micro_batch, seq_len // sp_size]}   # 0 on N / padding targets,
                                                               # soft_mask_weight on lower-case targets
How windows are cut and dealt is documented in :mod:`pretrain.data_plan`: every data-parallel rank yields
the same number of batches per epoch, no window is dealt twice in an epoch, the remainder that cannot be
dealt evenly is counted (:meth:`WindowStream.stats`), and ranks of one sequence-parallel group receive the
same windows and keep their slice ``[r * L / sp, (r + 1) * L / sp)``. The order depends on
``(seed, epoch, dp_rank)`` only, not on the number of loader workers, and :meth:`state_dict` is the same on
every rank, so resuming is exact (also with a different ``num_workers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_prep.format import load_manifest
from models.tokenizer import PAD_ID, byte_to_id_table
from pretrain.data_plan import EpochPlan, batches_per_rank, windows_per_sample
from pretrain.data_source import PAD_BYTE, WindowSource

STATE_FORMAT = "longdna-window-stream"
STATE_VERSION = 1


def loss_weight_table(soft_mask_weight: float) -> np.ndarray:
    """Byte -> loss weight of a target: 1 for ACGT, ``soft_mask_weight`` for acgt, 0 for N, n and padding."""
    table = np.zeros(256, dtype=np.float32)
    table[np.frombuffer(b"ACGT", dtype=np.uint8)] = 1.0
    table[np.frombuffer(b"acgt", dtype=np.uint8)] = soft_mask_weight
    return table


class WindowStream:
    """The batches of one rank, read by a torch DataLoader with ``num_workers`` workers inside.

    ``epochs=None`` iterates forever (training); ``epochs=k`` stops after ``k`` passes. ``shuffle=False``
    with ``epochs=1`` is a deterministic evaluation pass over every window (``drop_remainder`` defaults to
    False for finite streams: the last batches are filled up with empty, fully masked rows instead of
    dropping windows). ``return_windows=True`` adds ``"windows"``: int64 ``[micro_batch, 4]`` = (sample index,
    first base in the sample, real bases, reverse-complemented) per row, sample -1 for filler rows.
    """

    def __init__(self, data_dir, split: str = "train", *, seq_len: int, micro_batch: int, seed: int = 0,
                 dp_rank: int = 0, dp_size: int = 1, sp_rank: int = 0, sp_size: int = 1, num_workers: int = 0,
                 rc_prob: float = 0.0, soft_mask_weight: float = 1.0, shuffle: bool = True,
                 epochs: int | None = None, drop_remainder: bool | None = None, return_windows: bool = False,
                 prefetch_factor: int = 4):
        _check(0 <= dp_rank < dp_size, f"need 0 <= dp_rank < dp_size, got dp_rank={dp_rank}, dp_size={dp_size}")
        _check(0 <= sp_rank < sp_size, f"need 0 <= sp_rank < sp_size, got sp_rank={sp_rank}, sp_size={sp_size}")
        _check(num_workers >= 0, f"num_workers must be >= 0, got {num_workers}")
        _check(0.0 <= rc_prob <= 1.0, f"rc_prob is a probability in [0, 1], got {rc_prob}")
        _check(soft_mask_weight >= 0, f"soft_mask_weight must be >= 0, got {soft_mask_weight}")
        _check(epochs is None or epochs >= 1, f"epochs must be None (forever) or >= 1, got {epochs}")
        _check(isinstance(seed, int) and seed >= 0, f"seed must be an integer >= 0, got {seed!r}")
        self.manifest = load_manifest(Path(data_dir))
        self.split = split
        self.samples = self.manifest.samples(split)
        _check(len(self.samples) > 0, f"split {split!r} of {data_dir} holds no samples (all chunks dropped?)")
        self.lengths = np.array([s.length for s in self.samples], dtype=np.int64)
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.sp_rank, self.sp_size, self.num_workers = sp_rank, sp_size, num_workers
        self.rc_prob, self.shuffle, self.epochs = rc_prob, shuffle, epochs
        self.drop_remainder = (epochs is None) if drop_remainder is None else drop_remainder
        self.return_windows, self.prefetch_factor = return_windows, prefetch_factor
        self._ids = byte_to_id_table(np.int64)
        self._ids[PAD_BYTE] = PAD_ID
        self._weights = loss_weight_table(soft_mask_weight)
        self._epoch = self._batch = 0
        self._generation = 0  # bumped when the position jumps: iterators made before then are stale
        self._configure(seq_len, micro_batch)

    # -- layout ---------------------------------------------------------------------------------------
    def _configure(self, seq_len: int, micro_batch: int) -> None:
        limit = self.manifest.chunk_len - 1
        _check(seq_len >= 1 and micro_batch >= 1, f"seq_len and micro_batch must be >= 1, got {seq_len}, {micro_batch}")
        _check(seq_len <= limit, f"seq_len {seq_len} is longer than chunk_len - 1 = {limit} of the shards in "
               f"{self.manifest.root}; re-prepare them with --chunk-len >= {seq_len + 1}")
        _check(seq_len % self.sp_size == 0, f"seq_len {seq_len} is not divisible by the sequence-parallel degree "
               f"{self.sp_size}")
        windows = int(windows_per_sample(self.lengths, seq_len).sum())
        batches = batches_per_rank(windows, micro_batch, self.dp_size, self.drop_remainder)
        _check(batches >= 1, f"split {self.split!r} has {windows} windows of length {seq_len}, fewer than "
               f"dp_size x micro_batch = {self.dp_size * micro_batch}: lower micro_batch or seq_len, or prepare more data")
        self._seq_len, self._micro_batch, self._batches = seq_len, micro_batch, batches

    @property
    def seq_len(self) -> int:
        return self._seq_len

    @property
    def micro_batch(self) -> int:
        return self._micro_batch

    @property
    def epoch(self) -> int:
        """Epoch of the next batch to be yielded."""
        return self._epoch

    def batches_per_epoch(self) -> int:
        """Batches this rank yields per epoch; identical on every data-parallel rank."""
        return self._batches

    def set_seq_len(self, seq_len: int, micro_batch: int | None = None) -> None:
        """Switch to a new window length (a warm-up stage); takes effect at the next ``iter()`` (iterators
        made before refuse to continue).

        Windows of a new length tile the genome differently, so the stage starts at an epoch boundary: a
        training stream moves to the start of the next epoch when the current one has begun; a finite
        stream restarts its first epoch (each length gets its own full pass).
        """
        self._configure(seq_len, self._micro_batch if micro_batch is None else micro_batch)
        if self.epochs is not None:
            self._epoch = 0
        elif self._batch:
            self._epoch += 1
        self._batch = 0
        self._generation += 1

    def stats(self) -> dict:
        """Counts of the current epoch at the current length (see :meth:`EpochPlan.stats`)."""
        plan = EpochPlan(self.lengths, seq_len=self._seq_len, micro_batch=self._micro_batch, dp_size=self.dp_size,
                         seed=self.seed, epoch=self._epoch, shuffle=self.shuffle, drop_remainder=self.drop_remainder)
        return {"split": self.split, "seq_len": self._seq_len, "batches_per_epoch": self._batches, **plan.stats()}

    # -- resume ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Position and layout; the same on every rank (saving rank 0's is enough)."""
        return {"format": STATE_FORMAT, "version": STATE_VERSION, "split": self.split, "seed": self.seed,
                "dp_size": self.dp_size, "shuffle": self.shuffle, "drop_remainder": self.drop_remainder,
                "manifest": self.manifest.fingerprint, "seq_len": self._seq_len,
                "micro_batch": self._micro_batch, "epoch": self._epoch, "batch": self._batch}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuses a state of another data / seed / layout."""
        _check(state.get("format") == STATE_FORMAT and state.get("version") == STATE_VERSION,
               f"not a WindowStream state of version {STATE_VERSION}: {state.get('format')!r} v{state.get('version')!r}")
        for key in ("split", "seed", "dp_size", "shuffle", "drop_remainder", "manifest"):
            mine = self.state_dict()[key]
            _check(state[key] == mine, f"loader state has {key}={state[key]!r} but this stream has {mine!r}; "
                   "resuming would not reproduce the same batches (use the same data, seed and data-parallel size)")
        self._configure(int(state["seq_len"]), int(state["micro_batch"]))
        _check(0 <= state["batch"] < self._batches, f"loader state batch {state['batch']} outside this epoch")
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])
        self._generation += 1

    # -- iteration ------------------------------------------------------------------------------------
    def _position(self) -> int:
        return self._epoch * self._batches + self._batch

    def __iter__(self) -> Iterator[dict]:
        """Batches from the current position on (a new ``iter()`` continues where the last one stopped;
        a finite stream whose passes are complete starts over)."""
        stop = None if self.epochs is None else self.epochs * self._batches
        if stop is not None and self._position() >= stop:
            self._epoch = self._batch = 0
        source = WindowSource(
            self.manifest, self.samples, seq_len=self._seq_len, micro_batch=self._micro_batch,
            dp_rank=self.dp_rank, dp_size=self.dp_size, sp_rank=self.sp_rank, sp_size=self.sp_size,
            seed=self.seed, shuffle=self.shuffle, drop_remainder=self.drop_remainder, rc_prob=self.rc_prob,
            batches_per_epoch=self._batches, start=self._position(), stop=stop, return_windows=self.return_windows)
        if self.num_workers == 0:
            raw_batches = iter(source)
        else:
            # The DataLoader's default in-order collection (round-robin over workers) is what makes the
            # order independent of the number of workers (see pretrain.data_source).
            raw_batches = iter(DataLoader(source, batch_size=None, num_workers=self.num_workers,
                                          prefetch_factor=self.prefetch_factor))
        generation = self._generation
        for raw in raw_batches:
            if generation != self._generation:
                raise RuntimeError("this iterator predates set_seq_len() / load_state_dict(); call iter(stream) "
                                   "again to continue from the stream's new position")
            self._batch += 1
            if self._batch == self._batches:
                self._epoch, self._batch = self._epoch + 1, 0
            yield self._expand(raw)

    def _expand(self, raw: dict) -> dict:
        """Window bytes -> ids, labels (next base) and loss mask, by table look-ups into fresh tensors."""
        rows = raw["raw"].numpy()
        shape = (rows.shape[0], rows.shape[1] - 1)
        batch = {"input_ids": torch.empty(shape, dtype=torch.int64), "labels": torch.empty(shape, dtype=torch.int64),
                 "loss_mask": torch.empty(shape, dtype=torch.float32)}
        np.take(self._ids, rows[:, :-1], out=batch["input_ids"].numpy(), mode="clip")
        np.take(self._ids, rows[:, 1:], out=batch["labels"].numpy(), mode="clip")
        np.take(self._weights, rows[:, 1:], out=batch["loss_mask"].numpy(), mode="clip")
        if "windows" in raw:
            batch["windows"] = raw["windows"]
        return batch


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)

"""Labelled sequence data for fine-tuning: the splits of a task, padded batches, and the training stream.

Batches are dictionaries ``{"input_ids": int64 [B, L], "labels": int64 [B], "attention_mask": bool [B, L]}``
(the species stream's layout, so the trainer reads both alike). Sequences are padded with ``[PAD]`` to the tuning
length ``L`` on the configured side (HyenaDNA pads on the left, so the last position holds the last base).

:class:`ClassificationStream` is the training order: every epoch is a permutation of the train sequences that is
a pure function of (seed, epoch), dealt to data-parallel ranks in equal numbers of micro-batches (the remainder,
fewer than ``dp * micro_batch`` sequences, is left out of that epoch and counted); reverse-complement
augmentation draws from a generator seeded by (seed, epoch, rank, batch). Its ``state_dict()`` (epoch, batch)
makes resume exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from finetune.config import FinetuneConfig
from finetune.genomic_benchmarks import LabelledSequences, read_interval_dataset, read_sequence_file
from models.tokenizer import PAD_ID, encode, reverse_complement_ids

SPLITS = ("train", "valid", "test")


@dataclass
class TaskData:
    """The three splits of a task (``ids`` are int64 arrays, unpadded) and its class names."""

    splits: dict[str, tuple[list[np.ndarray], np.ndarray]]
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def max_len(self) -> int:
        return max(len(s) for ids, _ in self.splits.values() for s in ids)


def _tokenize(data: LabelledSequences, where: str) -> tuple[list[np.ndarray], np.ndarray]:
    ids = []
    for i, seq in enumerate(data.seqs):
        try:
            ids.append(encode(seq, strict=True))
        except ValueError as err:
            raise ValueError(f"{where}: sequence {i + 1}: {err}") from None
    return ids, np.asarray(data.labels, dtype=np.int64)


def _subset(rng: np.random.Generator, data: LabelledSequences, n: int | None) -> LabelledSequences:
    if n is None or n >= len(data):
        return data
    keep = np.sort(rng.permutation(len(data))[:n])
    return LabelledSequences([data.seqs[i] for i in keep], [data.labels[i] for i in keep], data.class_names)


def _hold_out(data: LabelledSequences, fraction: float, seed: int) -> tuple[LabelledSequences, LabelledSequences]:
    """Split ``data`` into (train, valid) with ``fraction`` of it, drawn with ``seed``, in valid."""
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(data))
    n_valid = max(1, round(fraction * len(data)))
    if n_valid >= len(data):
        raise ValueError(f"cannot hold out {fraction:.0%} of {len(data)} training sequences for validation and keep "
                         f"any for training; lower data.valid_fraction or give data.valid")
    pick = lambda idx: LabelledSequences([data.seqs[i] for i in sorted(idx)],  # noqa: E731
                                         [data.labels[i] for i in sorted(idx)], data.class_names)
    return pick(order[n_valid:]), pick(order[:n_valid])


def load_task(cfg: FinetuneConfig) -> TaskData:
    """Read, split and tokenize the task of ``cfg.data`` (formats ``tsv`` and ``intervals``)."""
    d, seed = cfg.data, cfg.run.seed
    names = d.class_names or None
    if d.format == "tsv":
        raw = {"train": read_sequence_file(d.train, names), "test": read_sequence_file(d.test, names)}
        raw["valid"] = read_sequence_file(d.valid, names) if d.valid else None
        if raw["valid"] is None:
            raw["train"], raw["valid"] = _hold_out(raw["train"], d.valid_fraction, seed)
        num_classes = max(max(r.labels) for r in raw.values()) + 1
        class_names = list(names) if names else [str(i) for i in range(num_classes)]
    elif d.format == "intervals":
        raw = {"train": read_interval_dataset(d.intervals, "train", d.fasta, names),
               "test": read_interval_dataset(d.intervals, "test", d.fasta, names)}
        raw["train"], raw["valid"] = _hold_out(raw["train"], d.valid_fraction, seed)
        class_names = raw["train"].class_names
    else:
        raise ValueError(f"load_task reads tsv / intervals data, not {d.format!r}")
    rng = np.random.default_rng([seed, 0xC0FFEE])
    splits = {}
    for split in SPLITS:
        part = _subset(rng, raw[split], d.max_samples)
        where = {"tsv": getattr(d, split) or d.train, "intervals": f"{d.intervals} ({split})"}[d.format]
        splits[split] = _tokenize(part, where)
    present = sorted({int(x) for _, labels in splits.values() for x in labels})
    if len(class_names) < 2 or present[-1] >= len(class_names):
        raise ValueError(f"{d.train or d.intervals}: a classification task needs at least two classes with ids "
                         f"0..{len(class_names) - 1}; found labels {present}")
    return TaskData(splits, class_names)


def pad_batch(seqs: list[np.ndarray], labels: np.ndarray, seq_len: int, side: str) -> dict[str, torch.Tensor]:
    """Pad token-id arrays to ``seq_len`` with ``[PAD]`` on ``side``; the mask marks real tokens."""
    ids = np.full((len(seqs), seq_len), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(seqs), seq_len), dtype=bool)
    for row, s in enumerate(seqs):
        if side == "left":
            ids[row, seq_len - len(s):], mask[row, seq_len - len(s):] = s, True
        else:
            ids[row, :len(s)], mask[row, :len(s)] = s, True
    return {"input_ids": torch.from_numpy(ids), "labels": torch.as_tensor(labels, dtype=torch.int64),
            "attention_mask": torch.from_numpy(mask)}


class ClassificationStream:
    """Endless training micro-batches of one data-parallel rank (see the module docstring)."""

    def __init__(self, seqs: list[np.ndarray], labels: np.ndarray, *, seq_len: int, micro_batch: int,
                 padding_side: str, seed: int = 0, dp_rank: int = 0, dp_size: int = 1, rc_prob: float = 0.0):
        self.seqs, self.labels = seqs, labels
        self.seq_len, self.micro_batch, self.side = seq_len, micro_batch, padding_side
        self.seed, self.rank, self.dp, self.rc_prob = seed, dp_rank, dp_size, rc_prob
        self.batches_per_epoch = len(seqs) // (micro_batch * dp_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"{len(seqs)} training sequences do not fill one micro-batch of {micro_batch} on each "
                             f"of {dp_size} rank(s): lower train.micro_batch or use more data")
        self.left_out = len(seqs) - self.batches_per_epoch * micro_batch * dp_size
        self.epoch, self.batch = 0, 0

    def _epoch_rows(self, epoch: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.seqs))
        dealt = order[: self.batches_per_epoch * self.micro_batch * self.dp]
        # Rank r takes every dp-th micro-batch, so ranks see disjoint sequences.
        return dealt.reshape(self.batches_per_epoch, self.dp, self.micro_batch)[:, self.rank]

    def __iter__(self):
        rows = self._epoch_rows(self.epoch)
        while True:
            if self.batch == self.batches_per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
                rows = self._epoch_rows(self.epoch)
            idx = rows[self.batch]
            seqs = [self.seqs[i] for i in idx]
            if self.rc_prob > 0:
                rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.batch, 0xAC])
                flip = rng.random(len(seqs)) < self.rc_prob
                seqs = [reverse_complement_ids(s) if f else s for s, f in zip(seqs, flip)]
            self.batch += 1
            yield pad_batch(seqs, self.labels[idx], self.seq_len, self.side)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def eval_batches(seqs: list[np.ndarray], labels: np.ndarray, *, seq_len: int, micro_batch: int, padding_side: str,
                 dp_rank: int = 0, dp_size: int = 1, limit: int | None = None):
    """Rank ``dp_rank``'s share of a whole split (every ``dp_size``-th sequence), in order, in micro-batches.

    Every rank yields the same number of batches (a collective forward, as under ZeRO-3, needs that): the last
    ones are filled up with copies of the first sequence marked ``keep = False``, which scoring skips.
    """
    per_rank = -(-len(seqs) // dp_size)
    idx = dp_rank + dp_size * np.arange(per_rank)
    keep = idx < len(seqs)
    idx = np.where(keep, idx, 0)
    if limit is not None:
        idx, keep = idx[: limit * micro_batch], keep[: limit * micro_batch]
    for start in range(0, len(idx), micro_batch):
        part = idx[start:start + micro_batch]
        batch = pad_batch([seqs[i] for i in part], labels[part], seq_len, padding_side)
        batch["keep"] = torch.from_numpy(keep[start:start + micro_batch].copy())
        yield batch


def check_tuning_length(cfg: FinetuneConfig, task: TaskData | None, l_max: int) -> int:
    """The tuning length (``data.seq_len`` or the longest sequence); ``ValueError`` if a sequence is longer or the
    length plus the soft prompts exceeds the backbone's ``l_max``."""
    longest = task.max_len() if task is not None else cfg.data.seq_len
    seq_len = cfg.data.seq_len or longest
    if longest > seq_len:
        raise ValueError(f"the data holds a sequence of {longest} bases, longer than data.seq_len={seq_len}: raise "
                         f"data.seq_len (or leave it 0 for the longest sequence)")
    total = seq_len + cfg.tuning.num_prompts
    if total > l_max:
        prompts = f" + {cfg.tuning.num_prompts} soft prompts" if cfg.tuning.num_prompts else ""
        raise ValueError(f"sequences of {seq_len} tokens{prompts} = {total} exceed the backbone's l_max={l_max}: use a backbone built with a larger "
                         f"model.l_max or shorter sequences")
    return seq_len


def describe(task: TaskData) -> str:
    """One line per split: size and class counts."""
    lines = []
    for split, (ids, labels) in task.splits.items():
        counts = np.bincount(labels, minlength=task.num_classes)
        lines.append(f"{split}: {len(ids)} sequences, " + ", ".join(
            f"{name}={int(c)}" for name, c in zip(task.class_names, counts)))
    return "; ".join(lines)

"""Writing one shard: read its chunks from the FASTA, check them, drop mostly-N chunks, write the tar.

The tar is written by hand (ustar headers from :mod:`tarfile`, fixed mtime/owner) so that its bytes are a
pure function of the input: a re-run produces byte-identical shards. The sha256 is computed from the bytes
as they are written (no second pass over the file). Writing and hashing run in a second thread (both
release the GIL on large buffers) and overlap reading and checking the next batch, so a worker keeps up to
two cores busy. Each shard goes to a temporary name and is renamed when complete, so a crash never
leaves a half-written ``shard-*.tar`` behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.dna import IUPAC_AMBIGUOUS, clean_bases, dna_counts
from data_prep.fasta import FaiEntry, FastaReader
from data_prep.format import TAR_BLOCK
from data_prep.regions import Chunk

_OUTPUT_BATCH = 1 << 20  # bytes handed to the output thread at once


class ShardWriter:
    """Appends samples (``<key>.json`` + ``<key>.seq``) to a tar, hashing every byte written.

    Pieces are collected into batches of about ``_OUTPUT_BATCH`` bytes; one output thread writes each batch to
    the file and hashes it, batches in order (file writes and ``hashlib`` release the GIL), while the caller
    reads and checks the next one. At most one batch is in the thread, so memory stays at two batches.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="shard-output")
        self._output: Future | None = None
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._batch.append(data)
        self._batch_bytes += len(data)
        self.size += len(data)
        if self._batch_bytes >= _OUTPUT_BATCH:
            self._flush()

    def _flush(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        if self._output is not None:
            self._output.result()  # the previous batch is written and hashed (and any error in it raised)
        self._output = self._thread.submit(self._write_and_hash, batch)

    def _write_and_hash(self, batch: list[bytes]) -> None:
        self._fh.writelines(batch)
        for data in batch:
            self._sha.update(data)

    def _member(self, name: str, data: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        self._write(info.tobuf(format=tarfile.USTAR_FORMAT))
        offset = self.size
        self._write(data)
        if len(data) % TAR_BLOCK:
            self._write(b"\0" * (TAR_BLOCK - len(data) % TAR_BLOCK))
        return offset

    def add(self, key: str, meta: dict, seq: bytes) -> int:
        """Add one sample; returns the byte offset of its sequence data in the tar."""
        self._member(f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        return self._member(f"{key}.seq", seq)

    def close(self) -> tuple[str, int]:
        """Finish the archive (two zero blocks), move it into place; returns ``(sha256, size)``."""
        self._write(b"\0" * (2 * TAR_BLOCK))
        self._flush()
        self._output.result()
        self._thread.shutdown()
        self._fh.close()
        self.tmp.replace(self.path)
        return self._sha.hexdigest(), self.size

    def abort(self) -> None:
        self._thread.shutdown(cancel_futures=True)
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardTask:
    """Everything a (possibly forked) worker needs to write one shard."""

    out: str
    relpath: str
    chunks: tuple[Chunk, ...]
    fasta: str
    entries: tuple[FaiEntry, ...]
    min_acgt: float
    iupac_to_n: bool
    plan: str  # hash of the shard's definition, stored with it for resume

    @property
    def bases(self) -> int:
        return sum(c.end - c.start for c in self.chunks)


def read_chunk(reader: FastaReader, chunk: Chunk, iupac_to_n: bool,
               scratch: np.ndarray | None = None) -> tuple[bytes, int, int]:
    """``(bases, n_bases, soft_masked_bases)`` of a chunk, bases exactly as in the FASTA without line ends.

    A byte that is not A/C/G/T/N raises ``ValueError`` naming the record and its offset. ``scratch``: see
    :func:`data_prep.dna.dna_counts`.
    """
    bases, bad = clean_bases(reader.fetch_raw(chunk.chrom, chunk.start, chunk.end), iupac_to_n=iupac_to_n)
    if len(bases) != chunk.end - chunk.start:
        raise ValueError(f"FASTA {reader.path}: record {chunk.chrom!r} gave {len(bases)} bases for "
                         f"{chunk.start}-{chunk.end}; the .fai index is stale (delete it to rebuild)")
    if bad >= 0:
        char = chr(reader.fetch(chunk.chrom, chunk.start, chunk.end)[bad])
        hint = " (an IUPAC ambiguity code: pass --iupac-to-n to read such codes as N)" \
            if char.encode() in IUPAC_AMBIGUOUS else \
            " (a header or line end inside the sequence: is the .fai index stale? delete it to rebuild)" \
            if char in ">\r\n" else ""
        raise ValueError(f"non-DNA character {char!r} in FASTA {reader.path}, record {chunk.chrom!r} at offset "
                         f"{chunk.start + bad} (0-based base offset){hint}; only A, C, G, T, N are allowed")
    return (bases, *dna_counts(bases, scratch))


def write_shard(task: ShardTask, progress=None) -> dict:
    """Write one shard and return its manifest record (kept samples, dropped chunks, counts, sha256)."""
    reader = FastaReader(Path(task.fasta), list(task.entries))
    writer = ShardWriter(Path(task.out) / task.relpath)
    index, dropped = [], []
    n_total = lower_total = 0
    scratch = np.empty(max(c.end - c.start for c in task.chunks), dtype=np.uint8)
    try:
        for c in task.chunks:
            bases, n, lower = read_chunk(reader, c, task.iupac_to_n, scratch)
            if (len(bases) - n) < task.min_acgt * len(bases):
                dropped.append([c.key, c.chrom, c.start, c.end, n])
            else:
                meta = {"chrom": c.chrom, "start": c.start, "end": c.end, "split": c.split}
                index.append([c.key, c.chrom, c.start, c.end, writer.add(c.key, meta, bases)])
                n_total, lower_total = n_total + n, lower_total + lower
            if progress is not None:
                progress(len(bases))
        sha, size = writer.close()
    except BaseException:
        writer.abort()
        raise
    return {"path": task.relpath, "samples": len(index), "bases": sum(e - s for _, _, s, e, _ in index),
            "bytes": size, "sha256": sha, "n_bases": n_total, "soft_masked_bases": lower_total,
            "dropped_bases": sum(e - s for _, _, s, e, _ in dropped), "index": index, "dropped": dropped,
            "plan": task.plan}

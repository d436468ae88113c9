"""Writing one shard: read its chunks from the FASTA, check them, drop mostly-N chunks, write the tar.

The tar is written by hand (ustar headers from :mod:`tarfile`, fixed mtime/owner) so that its bytes are a
pure function of the input: a re-run produces byte-identical shards, and the sha256 is computed while
writing (no second pass). Each shard goes to a temporary name and is renamed when complete, so a crash never
leaves a half-written ``shard-*.tar`` behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.dna import IUPAC_AMBIGUOUS, base_stats, strip_line_ends
from data_prep.fasta import FaiEntry, FastaReader
from data_prep.format import TAR_BLOCK
from data_prep.regions import Chunk


class ShardWriter:
    """Appends samples (``<key>.json`` + ``<key>.seq``) to a tar, hashing every byte written."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.tmp, "wb")
        self._sha = hashlib.sha256()
        self.size = 0

    def _write(self, data: bytes) -> None:
        self._fh.write(data)
        self._sha.update(data)
        self.size += len(data)

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
        self._fh.close()
        self.tmp.replace(self.path)
        return self._sha.hexdigest(), self.size

    def abort(self) -> None:
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


def read_chunk(reader: FastaReader, chunk: Chunk, iupac_to_n: bool) -> tuple[bytes, int, int]:
    """``(bases, n_bases, soft_masked_bases)`` of a chunk, bases exactly as in the FASTA without line ends.

    A byte that is not A/C/G/T/N raises ``ValueError`` naming the record and its offset.
    """
    bases = strip_line_ends(reader.fetch_raw(chunk.chrom, chunk.start, chunk.end), iupac_to_n=iupac_to_n)
    if len(bases) != chunk.end - chunk.start:
        raise ValueError(f"FASTA {reader.path}: record {chunk.chrom!r} gave {len(bases)} bases for "
                         f"{chunk.start}-{chunk.end}; the .fai index is stale (delete it to rebuild)")
    n, lower, bad = base_stats(bases)
    if bad >= 0:
        char = chr(reader.fetch(chunk.chrom, chunk.start, chunk.end)[bad])
        hint = " (an IUPAC ambiguity code: pass --iupac-to-n to read such codes as N)" \
            if char.encode() in IUPAC_AMBIGUOUS else \
            " (a header or line end inside the sequence: is the .fai index stale? delete it to rebuild)" \
            if char in ">\r\n" else ""
        raise ValueError(f"non-DNA character {char!r} in FASTA {reader.path}, record {chunk.chrom!r} at offset "
                         f"{chunk.start + bad} (0-based base offset){hint}; only A, C, G, T, N are allowed")
    return bases, n, lower


def write_shard(task: ShardTask, progress=None) -> dict:
    """Write one shard and return its manifest record (kept samples, dropped chunks, counts, sha256)."""
    reader = FastaReader(Path(task.fasta), list(task.entries))
    writer = ShardWriter(Path(task.out) / task.relpath)
    index, dropped = [], []
    n_total = lower_total = 0
    try:
        for c in task.chunks:
            bases, n, lower = read_chunk(reader, c, task.iupac_to_n)
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

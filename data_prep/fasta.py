"""Random access to plain and BGZF-compressed FASTA files through a samtools-compatible ``.fai`` index.

The ``.fai`` is read when present and built by one streaming pass when missing (written next to the FASTA
when that folder is writable, otherwise kept in memory). Reads are ``os.pread`` calls on a descriptor that
each process opens for itself on first use, so a reader created before ``fork`` stays correct in the
children (unlike a shared pyfaidx handle, which returns wrong bases after fork).

Line-end bytes are returned by :meth:`FastaReader.fetch_raw` untouched; the caller strips and checks them
in one ``bytes.translate`` pass (see :mod:`data_prep.dna`).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_prep.bgzf import BgzfFile, compression_of

_BLOCK = 16 << 20  # bytes per read while building an index


@dataclass(frozen=True)
class FaiEntry:
    """One ``.fai`` line: record name, bases, byte offset of the first base, bases and bytes per line."""

    name: str
    length: int
    offset: int
    linebases: int
    linewidth: int


def read_fai(path: Path) -> list[FaiEntry]:
    """Parse a samtools ``.fai`` file."""
    entries = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        try:
            entries.append(FaiEntry(cols[0], *(int(c) for c in cols[1:5])))
        except (ValueError, TypeError, IndexError):
            raise ValueError(f"{path}:{lineno}: not a .fai line ({line!r}); delete the file to rebuild it") from None
    return entries


def fai_text(entries: list[FaiEntry]) -> str:
    """The ``.fai`` file content of ``entries`` (also hashed into the manifest to identify the FASTA)."""
    return "".join(f"{e.name}\t{e.length}\t{e.offset}\t{e.linebases}\t{e.linewidth}\n" for e in entries)


def fai_sha256(entries: list[FaiEntry]) -> str:
    """sha256 of the canonical ``.fai`` text."""
    return hashlib.sha256(fai_text(entries).encode()).hexdigest()


class _Record:
    """State of the record being scanned by :func:`build_fai`."""

    def __init__(self, name: str, offset: int):
        self.name, self.offset = name, offset
        self.length = self.linebases = self.linewidth = 0
        self.short_line_seen = False

    def add_lines(self, bases: np.ndarray, widths: np.ndarray, where: str) -> None:
        """Account sequence lines; all but the last must have the first line's length (samtools rule)."""
        if not bases.size:
            return
        if self.linebases == 0 and self.length == 0:
            self.linebases, self.linewidth = int(bases[0]), int(widths[0])
        full = bases == self.linebases
        if (bases > self.linebases).any() or (widths[full] != self.linewidth).any():
            raise ValueError(f"{where}: record {self.name!r} has lines of unequal length or mixed line ends; "
                             "rewrap it (e.g. `seqkit seq -w 60`) so that all lines but the last are equally long")
        short = np.flatnonzero(~full)
        later = bases[short[0] + 1:] if short.size else bases[:0]
        if (self.short_line_seen and (bases > 0).any()) or (later > 0).any():
            raise ValueError(f"{where}: record {self.name!r} has a short or blank line before its last line; "
                             "rewrap it (e.g. `seqkit seq -w 60`) so that all lines but the last are equally long")
        self.short_line_seen = self.short_line_seen or bool(short.size)
        self.length += int(bases.sum())

    def entry(self) -> FaiEntry:
        return FaiEntry(self.name, self.length, self.offset, self.linebases, self.linewidth)


def build_fai(path: Path) -> list[FaiEntry]:
    """Scan a plain or BGZF FASTA once and return its index (offsets are uncompressed byte offsets)."""
    path = Path(path)
    opener = gzip.open if compression_of(path) == "bgzf" else open
    records: list[_Record] = []
    names: set[str] = set()
    pos, carry = 0, b""  # pos: absolute offset of carry[0]
    with opener(path, "rb") as fh:
        while True:
            block = fh.read(_BLOCK)
            data = carry + block
            if not block:
                if data:  # a last line without a line end (its width never enters an offset)
                    _scan_lines(data + b"\n", pos, records, names, path)
                break
            cut = data.rfind(b"\n") + 1
            if cut:
                _scan_lines(data[:cut], pos, records, names, path)
            carry, pos = data[cut:], pos + cut
    if not records:
        raise ValueError(f"FASTA {path} holds no sequence records (empty file or no '>' header)")
    return [r.entry() for r in records]


def _scan_lines(data: bytes, pos: int, records: list, names: set, path: Path) -> None:
    """Index the whole lines in ``data`` (which ends with a newline) starting at absolute offset ``pos``."""
    arr = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lens = ends - starts
    cr = (lens > 0) & (arr[np.maximum(ends - 1, 0)] == 13)
    bases, widths = lens - cr, lens + 1
    is_header = (lens > 0) & (arr[np.minimum(starts, len(arr) - 1)] == ord(">"))
    cuts = np.flatnonzero(is_header)
    first = cuts[0] if cuts.size else len(starts)
    where = f"FASTA {path}"
    if first:
        if not records:
            if (bases[:first] > 0).any():
                raise ValueError(f"{where}: sequence before the first '>' header; is this a FASTA file?")
        else:
            records[-1].add_lines(bases[:first], widths[:first], where)
    for j, h in enumerate(cuts):
        header = data[starts[h] + 1:ends[h]].decode("ascii", "replace").split()
        if not header:
            raise ValueError(f"{where}: header without a name at byte {pos + int(starts[h])}")
        name = header[0]
        if name in names:
            raise ValueError(f"{where}: duplicate record name {name!r}; record names must be unique")
        names.add(name)
        records.append(_Record(name, pos + int(ends[h]) + 1))
        stop = cuts[j + 1] if j + 1 < cuts.size else len(starts)
        records[-1].add_lines(bases[h + 1:stop], widths[h + 1:stop], where)


def load_index(path: Path) -> tuple[list[FaiEntry], str]:
    """Index of ``path``: its ``.fai`` if present, else built and written next to it when possible.

    Returns ``(entries, note)``; ``note`` says where the index came from (for logs).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"FASTA file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"FASTA {path} is empty")
    compression_of(path)  # refuses plain gzip with advice before any scanning
    fai = Path(str(path) + ".fai")
    if fai.is_file():
        entries = read_fai(fai)
        if not entries:
            raise ValueError(f"{fai} is empty; delete it to rebuild the index")
        return entries, f"index {fai}"
    entries = build_fai(path)
    try:
        tmp = fai.with_name(fai.name + f".tmp{os.getpid()}")
        tmp.write_text(fai_text(entries))
        tmp.replace(fai)
        return entries, f"built index {fai}"
    except OSError:
        return entries, f"built index in memory ({fai.parent} is not writable)"


class FastaReader:
    """Reads base ranges of one FASTA by record name and 0-based half-open coordinates."""

    def __init__(self, path: Path, entries: list[FaiEntry] | None = None):
        self.path = Path(path)
        self.entries = {e.name: e for e in (entries if entries is not None else load_index(self.path)[0])}
        self.compression = compression_of(self.path)
        self._pid = None
        self._fh = None

    def __getstate__(self):  # descriptors are per process: children reopen
        state = dict(self.__dict__)
        state["_pid"], state["_fh"] = None, None
        return state

    def _handle(self):
        if self._pid != os.getpid():
            self._fh = BgzfFile(self.path) if self.compression == "bgzf" else _PlainFile(self.path)
            self._pid = os.getpid()
        return self._fh

    def fetch_raw(self, name: str, start: int, end: int) -> bytes:
        """File bytes covering bases ``[start, end)`` of ``name``, line ends included."""
        e = self.entries.get(name)
        if e is None:
            raise ValueError(f"record {name!r} is not in {self.path}")
        if not 0 <= start <= end <= e.length:
            raise ValueError(f"{name}:{start}-{end} lies outside {name} (length {e.length}) in {self.path}")
        if start == end:
            return b""
        b0 = e.offset + (start // e.linebases) * e.linewidth + start % e.linebases
        last = end - 1
        b1 = e.offset + (last // e.linebases) * e.linewidth + last % e.linebases + 1
        raw = self._handle().pread(b1 - b0, b0)
        if len(raw) != b1 - b0:
            raise ValueError(f"{self.path} ended early while reading {name}:{start}-{end}; the file is truncated "
                             "or its .fai index is stale (delete the .fai to rebuild it)")
        return raw

    def fetch(self, name: str, start: int, end: int) -> bytes:
        """Bases ``[start, end)`` of ``name`` with line ends removed (case kept, no other check)."""
        return self.fetch_raw(name, start, end).translate(None, b"\r\n")


class _PlainFile:
    def __init__(self, path: Path):
        self.fd = os.open(path, os.O_RDONLY)

    def pread(self, n: int, offset: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass

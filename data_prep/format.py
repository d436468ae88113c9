"""Shard format version 1 (DESIGN §3): manifest reading and random access to sample bytes.

This is the one module through which anything outside ``data_prep`` reads prepared shards. Layout::

    OUT/manifest.json                 written last by ``python -m data_prep shards``
    OUT/<split>/shard-000000.tar      WebDataset tar: <key>.json then <key>.seq per sample

The manifest lists, per shard, every sample as ``[key, chrom, start, end, offset]`` where ``offset`` is the
byte offset of the ``.seq`` data inside the tar, so readers fetch any stretch of any sample with one
``pread`` (no tar parsing on the hot path). Every read checks, once per sample and process, that the tar
header at that offset names the expected member with the expected size, and checks each returned stretch
for non-DNA bytes; a file shorter than recorded is reported on open. Errors name the shard and say to run
``python -m data_prep verify``, which compares whole-shard sha256 sums (and, given the FASTA, every base).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from data_prep.dna import is_dna

FORMAT_NAME = "longdna-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TAR_BLOCK = 512


def shard_relpath(split: str, number: int) -> str:
    """Path of shard ``number`` of ``split`` relative to the output folder."""
    return f"{split}/shard-{number:06d}.tar"


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives: genome coordinates, shard (relative path) and data offset in the tar."""

    key: str
    chrom: str
    start: int
    end: int
    shard: str
    offset: int

    @property
    def length(self) -> int:
        return self.end - self.start


class Manifest:
    """A loaded ``manifest.json``: splits, shards and samples of one prepared data folder."""

    def __init__(self, root: Path, data: dict, raw: bytes = b""):
        self.root = Path(root)
        self.data = data
        self.fingerprint = hashlib.sha256(raw or json.dumps(data, sort_keys=True).encode()).hexdigest()
        self._shard_sizes = {sh["path"]: int(sh["bytes"]) for sp in data["splits"].values() for sh in sp["shards"]}

    @property
    def chunk_len(self) -> int:
        return int(self.data["chunk_len"])

    @property
    def splits(self) -> list[str]:
        return list(self.data["splits"])

    def split(self, name: str) -> dict:
        """Totals and shards of split ``name``; a clear error when the folder has no such split."""
        if name not in self.data["splits"]:
            raise ValueError(f"{self.root} has no split {name!r}; it has {', '.join(self.splits) or 'none'}")
        return self.data["splits"][name]

    def shards(self, name: str) -> list[dict]:
        return self.split(name)["shards"]

    def samples(self, name: str) -> list[SampleRef]:
        """Every kept sample of split ``name`` in genome order."""
        return [SampleRef(key, chrom, int(s), int(e), shard["path"], int(off))
                for shard in self.shards(name) for key, chrom, s, e, off in shard["index"]]

    def shard_bytes(self, relpath: str) -> int:
        """Recorded file size of a shard."""
        return self._shard_sizes[relpath]


def load_manifest(path: Path) -> Manifest:
    """Load ``DIR/manifest.json`` (``path`` may be the folder or the file); refuses unknown versions."""
    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no {MANIFEST_NAME} in {path}: prepare shards first "
                         "(python -m data_prep shards --fasta F --out DIR), or the preparation did not finish")
    raw = file.read_bytes()
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-run the preparation to rewrite it") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{file} is not a longdna shard manifest (no \"format\": \"{FORMAT_NAME}\")")
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"{file} has shard format version {data.get('version')!r}; this reader knows version "
                         f"{FORMAT_VERSION} only: re-prepare the shards with this version of longdna")
    for key in ("chunk_len", "splits"):
        if key not in data:
            raise ValueError(f"{file} lacks the field {key!r}; re-prepare the shards")
    try:
        return Manifest(file.parent, data, raw)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{file} is malformed ({type(err).__name__}: {err}); re-prepare the shards") from None


def parse_tar_header(block: bytes) -> tuple[str, int]:
    """``(name, size)`` of a ustar header block."""
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
    size_field = block[124:136].split(b"\0", 1)[0].strip()
    try:
        size = int(size_field or b"0", 8)
    except ValueError:
        size = -1
    return name, size


class ShardReader:
    """Reads stretches of samples from the shards of one manifest; descriptors are opened per process."""

    def __init__(self, manifest: Manifest):
        self.manifest = manifest
        self._pid = None
        self._fds: dict[str, int] = {}
        self._checked: set[str] = set()

    def __getstate__(self):  # children reopen their own descriptors
        return {"manifest": self.manifest, "_pid": None, "_fds": {}, "_checked": set()}

    def _fd(self, relpath: str) -> int:
        if self._pid != os.getpid():
            self._pid, self._fds, self._checked = os.getpid(), {}, set()
        fd = self._fds.get(relpath)
        if fd is None:
            path = self.manifest.root / relpath
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as err:
                raise ValueError(f"shard {path} cannot be opened ({err.strerror}); re-run the preparation") from None
            size, want = os.fstat(fd).st_size, self.manifest.shard_bytes(relpath)
            if size != want:
                os.close(fd)
                raise ValueError(f"shard {path} is truncated or was rewritten: {size} bytes, manifest says {want}; "
                                 "run `python -m data_prep verify` and re-run the preparation")
            self._fds[relpath] = fd
        return fd

    def _check_header(self, sample: SampleRef, fd: int) -> None:
        block = os.pread(fd, TAR_BLOCK, sample.offset - TAR_BLOCK)
        name, size = parse_tar_header(block)
        if name != f"{sample.key}.seq" or size != sample.length:
            raise ValueError(
                f"shard {self.manifest.root / sample.shard} is corrupted: expected member {sample.key}.seq of "
                f"{sample.length} bytes at byte {sample.offset}, found {name!r} of {size}; run "
                "`python -m data_prep verify` and re-run the preparation")
        self._checked.add(sample.key)

    def read(self, sample: SampleRef, start: int, stop: int) -> bytes:
        """Bases ``[start, stop)`` of ``sample`` (offsets within the sample), checked to be DNA bytes."""
        if not 0 <= start <= stop <= sample.length:
            raise ValueError(f"read [{start}, {stop}) outside sample {sample.key} of length {sample.length}")
        fd = self._fd(sample.shard)
        if sample.key not in self._checked:
            self._check_header(sample, fd)
        data = os.pread(fd, stop - start, sample.offset + start)
        if len(data) != stop - start or not is_dna(data):
            raise ValueError(f"shard {self.manifest.root / sample.shard} is corrupted: sample {sample.key} bytes "
                             f"[{start}, {stop}) are not DNA; run `python -m data_prep verify` and re-run the "
                             "preparation")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def sha256_file(path: Path, block: int = 8 << 20) -> str:
    """sha256 hex digest of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()

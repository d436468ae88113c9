"""BGZF (block gzip, as written by ``bgzip``) random access by uncompressed byte offset.

A BGZF file is a series of gzip members of at most 64 KiB each; every member's header carries its
compressed size (extra subfield ``BC``) and its trailer the uncompressed size. One pass over the headers
(no decompression, ~50k blocks for a whole human genome) gives the block table; a read then inflates only
the blocks it covers. Plain gzip has no such blocks and cannot be read at random: it is refused with advice.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
import zlib
from pathlib import Path

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(path: Path) -> str:
    """``"none"`` or ``"bgzf"``; any other compression raises ``ValueError`` saying how to convert."""
    with open(path, "rb") as fh:
        head = fh.read(18)
    for magic, kind in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise ValueError(f"{path} is {kind}-compressed; decompress it, or recompress with `bgzip`")
    if not head.startswith(_GZIP_MAGIC):
        return "none"
    if _is_bgzf_header(head):
        return "bgzf"
    raise ValueError(
        f"{path} is gzip-compressed but not BGZF, so it cannot be read at random positions; "
        f"run `gunzip {path}` (or `zcat {path} | bgzip > {Path(path).with_suffix('')}.bgz.fa.gz`) and pass that file")


def _is_bgzf_header(head: bytes) -> bool:
    # FLG.FEXTRA set, XLEN >= 6 and the first subfield is 'BC' of length 2 (the BGZF spec's fixed layout).
    return len(head) >= 18 and head[3] & 4 and head[12:14] == b"BC" and head[14:16] == b"\x02\x00"


class BgzfFile:
    """A BGZF file readable like a plain file at uncompressed offsets (``pread(n, offset)``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._cstart, self._ustart = self._scan_blocks()
        self._cache = (-1, b"")  # last inflated block: sequential reads share boundary blocks

    def _scan_blocks(self) -> tuple[list[int], list[int]]:
        mm, c, u = self._mm, 0, 0
        cstart, ustart = [], []
        while c < len(mm):
            if not _is_bgzf_header(mm[c:c + 18]):
                raise ValueError(f"{self.path}: corrupt BGZF block header at compressed byte {c}")
            bsize = struct.unpack_from("<H", mm, c + 16)[0] + 1
            if c + bsize > len(mm):
                raise ValueError(f"{self.path}: truncated BGZF block at compressed byte {c}; re-download the file")
            isize = struct.unpack_from("<I", mm, c + bsize - 4)[0]
            cstart.append(c)
            ustart.append(u)
            c, u = c + bsize, u + isize
        cstart.append(c)
        ustart.append(u)  # sentinel: total uncompressed size
        return cstart, ustart

    @property
    def size(self) -> int:
        """Uncompressed size in bytes."""
        return self._ustart[-1]

    def _block(self, i: int) -> bytes:
        if self._cache[0] != i:
            c = self._cstart[i]
            xlen = struct.unpack_from("<H", self._mm, c + 10)[0]
            body = self._mm[c + 12 + xlen:self._cstart[i + 1] - 8]
            try:
                data = zlib.decompress(body, wbits=-15)
            except zlib.error as err:
                raise ValueError(f"{self.path}: corrupt BGZF block at compressed byte {c} ({err})") from None
            self._cache = (i, data)
        return self._cache[1]

    def pread(self, n: int, offset: int) -> bytes:
        """Up to ``n`` uncompressed bytes from ``offset`` (fewer at the end of the file)."""
        end = min(offset + n, self.size)
        if offset >= end:
            return b""
        first = bisect.bisect_right(self._ustart, offset) - 1
        last = bisect.bisect_right(self._ustart, end - 1) - 1
        parts = [self._block(i) for i in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        skip = offset - self._ustart[first]
        return data[skip:skip + end - offset]

"""DNA byte tables and whole-buffer checks for data preparation (``data_prep`` imports nothing above it).

Everything runs over whole buffers in C (``bytes.translate``, ``bytes.find``, numpy bit masks and
``count_nonzero``), a few passes over memory per base and no per-character Python, so preparation keeps
up with reading the FASTA.
"""

from __future__ import annotations

import numpy as np

DNA = b"ACGTNacgtn"
UPPER = b"ACGTN"
LINE_ENDS = b"\r\n"
# IUPAC ambiguity codes other than N; ``--iupac-to-n`` maps them to N (n when lower case).
IUPAC_AMBIGUOUS = b"RYKMSWBDHVrykmswbdhv"

# DNA bytes map to themselves, every other byte to NUL (never valid), so ``find(0)`` locates a bad byte.
_CHECK_TABLE = bytes(c if c in DNA else 0 for c in range(256))
_IUPAC_TO_N_TABLE = bytes(
    (ord("n") if chr(c).islower() else ord("N")) if c in IUPAC_AMBIGUOUS else (c if c in DNA else 0)
    for c in range(256)
)
# Among A/C/G/T/N in either case, bit 3 (0x08) is set for N/n only and bit 5 (0x20) for lower case only.
_N_BIT, _LOWER_BIT = 0x08, 0x20
assert [c for c in DNA if c & _N_BIT] == list(b"Nn") and [c for c in DNA if c & _LOWER_BIT] == list(b"acgtn")


def strip_line_ends(raw: bytes, *, iupac_to_n: bool = False) -> bytes:
    """The bases of a stretch of FASTA lines: line ends removed (IUPAC codes made N/n with ``iupac_to_n``)."""
    if iupac_to_n:
        return raw.translate(_IUPAC_TO_N_TABLE, LINE_ENDS)
    bases = raw.replace(b"\n", b"")
    return bases.replace(b"\r", b"") if b"\r" in bases else bases


def clean_bases(raw: bytes, *, iupac_to_n: bool = False) -> tuple[bytes, int]:
    """``(bases, bad)``: line ends removed and every byte checked in one ``translate`` pass.

    ``bad`` is the offset in ``bases`` of the first byte that is not A/C/G/T/N (either case; with
    ``iupac_to_n`` IUPAC codes become N/n first), or -1. Non-DNA bytes come back as NUL, so when ``bad >= 0``
    the caller reads the offending byte from the source.
    """
    bases = raw.translate(_IUPAC_TO_N_TABLE if iupac_to_n else _CHECK_TABLE, LINE_ENDS)
    return bases, bases.find(0)


def dna_counts(bases: bytes, scratch: np.ndarray | None = None) -> tuple[int, int]:
    """``(n_bases, soft_masked_bases)`` of bases already checked to be A/C/G/T/N: N/n and lower-case bytes.

    Two masks and two ``count_nonzero`` over the buffer (see ``_N_BIT``); ``scratch``, a uint8 array at least
    as long as ``bases``, saves allocating the mask each call.
    """
    arr = np.frombuffer(bases, dtype=np.uint8)
    mask = np.empty_like(arr) if scratch is None else scratch[:arr.size]
    n = int(np.count_nonzero(np.bitwise_and(arr, _N_BIT, out=mask)))
    lower = int(np.count_nonzero(np.bitwise_and(arr, _LOWER_BIT, out=mask)))
    return n, lower


def first_non_dna(bases: bytes) -> int:
    """Offset of the first byte that is not A/C/G/T/N (either case), or -1."""
    return bases.translate(_CHECK_TABLE).find(0)


def base_stats(bases: bytes) -> tuple[int, int, int]:
    """``(n_bases, soft_masked_bases, bad_offset)`` of a sequence: N/n, lower-case bytes (n included), and the
    first non-DNA byte or -1. The counts are exact also when ``bad_offset >= 0``."""
    bad = first_non_dna(bases)
    if bad < 0:
        return (*dna_counts(bases), -1)
    arr = np.frombuffer(bases, dtype=np.uint8)  # not DNA throughout: count by value
    n = int(np.count_nonzero((arr | np.uint8(32)) == ord("n")))
    return n, int(np.count_nonzero(arr >= ord("a"))), bad


def is_dna(data: bytes) -> bool:
    """True when every byte of ``data`` is A/C/G/T/N in either case."""
    return not data.translate(None, DNA)

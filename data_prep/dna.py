"""DNA byte tables and whole-buffer checks for data preparation (``data_prep`` imports nothing above it).

Everything runs over whole buffers in C (``bytes.replace`` / ``bytes.translate``, numpy comparisons and
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
_LOWER_ACGT = (ord("a"), ord("c"), ord("g"), ord("t"))


def strip_line_ends(raw: bytes, *, iupac_to_n: bool = False) -> bytes:
    """The bases of a stretch of FASTA lines: line ends removed (IUPAC codes made N/n with ``iupac_to_n``)."""
    if iupac_to_n:
        return raw.translate(_IUPAC_TO_N_TABLE, LINE_ENDS)
    bases = raw.replace(b"\n", b"")
    return bases.replace(b"\r", b"") if b"\r" in bases else bases


def first_non_dna(bases: bytes) -> int:
    """Offset of the first byte that is not A/C/G/T/N (either case), or -1."""
    return bases.translate(_CHECK_TABLE).find(0)


def base_stats(bases: bytes) -> tuple[int, int, int]:
    """``(n_bases, soft_masked_bases, bad_offset)`` of a sequence in a handful of vectorised passes.

    ``n_bases`` counts N/n, ``soft_masked_bases`` lower-case bytes (n included), ``bad_offset`` is the first
    non-DNA byte or -1. Folding case (``| 32``) maps A/a to a etc., so five comparisons classify every byte.
    """
    arr = np.frombuffer(bases, dtype=np.uint8)
    folded = arr | np.uint8(32)
    hit = np.empty(arr.shape, dtype=bool)
    n = int(np.count_nonzero(np.equal(folded, ord("n"), out=hit)))
    acgt = sum(int(np.count_nonzero(np.equal(folded, c, out=hit))) for c in _LOWER_ACGT)
    lower = int(np.count_nonzero(np.greater_equal(arr, ord("a"), out=hit)))
    bad = -1 if n + acgt == len(bases) else first_non_dna(bases)
    return n, lower, bad


def is_dna(data: bytes) -> bool:
    """True when every byte of ``data`` is A/C/G/T/N in either case."""
    return not data.translate(None, DNA)

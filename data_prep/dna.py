"""DNA byte tables for data preparation (kept here so that ``data_prep`` imports nothing above it).

Everything works on whole ``bytes`` objects with ``bytes.translate`` / ``bytes.count``, which run in C at
1-2 GB/s, so preparing a genome costs a few passes over memory per base and no per-character Python.
"""

from __future__ import annotations

DNA = b"ACGTNacgtn"
UPPER = b"ACGTN"
LINE_ENDS = b"\r\n"
# IUPAC ambiguity codes other than N; ``--iupac-to-n`` maps them to N (n when lower case).
IUPAC_AMBIGUOUS = b"RYKMSWBDHVrykmswbdhv"

# Maps every DNA byte to itself and every other byte to NUL, so one translate pass both copies the
# sequence and marks bad bytes; a NUL is then found with a memchr-speed ``find``.
_CHECK_TABLE = bytes(c if c in DNA else 0 for c in range(256))
_IUPAC_TO_N_TABLE = bytes(
    (ord("n") if chr(c).islower() else ord("N")) if c in IUPAC_AMBIGUOUS else (c if c in DNA else 0)
    for c in range(256)
)


def clean_bases(raw: bytes, *, iupac_to_n: bool = False) -> tuple[bytes, int]:
    """Strip line ends from ``raw`` and check that every remaining byte is DNA.

    Returns ``(bases, bad_offset)`` where ``bad_offset`` is the offset in ``bases`` of the first byte that is
    not ``A/C/G/T/N`` (either case), or -1 when all are. With ``iupac_to_n`` the IUPAC ambiguity codes
    (R, Y, K, M, ...) become N / n instead of being reported.
    """
    table = _IUPAC_TO_N_TABLE if iupac_to_n else _CHECK_TABLE
    bases = raw.translate(table, LINE_ENDS)
    bad = bases.find(0)
    return bases, bad


def base_counts(bases: bytes) -> tuple[int, int]:
    """``(n_bases, soft_masked_bases)``: N/n count and lower-case count of a checked DNA sequence."""
    n = len(bases.translate(None, b"ACGTacgt"))
    lower = len(bases.translate(None, UPPER))
    return n, lower


def is_dna(data: bytes) -> bool:
    """True when every byte of ``data`` is A/C/G/T/N in either case."""
    return not data.translate(None, DNA)

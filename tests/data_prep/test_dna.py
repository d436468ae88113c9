"""Vectorised DNA checks and counts against a plain Python count."""

import numpy as np
import pytest

from data_prep.dna import base_stats, clean_bases, dna_counts, first_non_dna, is_dna, strip_line_ends


@pytest.mark.parametrize("seed", range(4))
def test_base_stats_match_a_plain_count(seed):
    rng = np.random.default_rng(seed)
    seq = bytes(rng.choice(np.frombuffer(b"ACGTNacgtn", dtype=np.uint8), size=5000))
    n, lower, bad = base_stats(seq)
    assert (n, lower, bad) == (sum(c in b"Nn" for c in seq), sum(c in b"acgtn" for c in seq), -1)
    assert is_dna(seq)


@pytest.mark.parametrize("byte", [b"R", b"*", b"\0", b"!", b"a"[0:0] + b"\xe1", b" ", b">"])
def test_any_other_byte_is_found(byte):
    seq = b"ACGTacgtnN" * 10 + byte + b"ACGT"
    assert base_stats(seq)[2] == first_non_dna(seq) == 100
    assert not is_dna(seq)


def test_strip_line_ends_and_iupac():
    assert strip_line_ends(b"ACG\nTa\n") == b"ACGTa"
    assert strip_line_ends(b"ACG\r\nTa\r\n") == b"ACGTa"
    assert strip_line_ends(b"ACRy\nK*\n", iupac_to_n=True) == b"ACNnN\0"


@pytest.mark.parametrize("iupac_to_n", [False, True])
def test_clean_bases_strips_checks_and_counts_in_step_with_the_plain_functions(iupac_to_n):
    rng = np.random.default_rng(7)
    seq = bytes(rng.choice(np.frombuffer(b"ACGTNacgtn", dtype=np.uint8), size=3000))
    raw = b"\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + b"\n"
    bases, bad = clean_bases(raw, iupac_to_n=iupac_to_n)
    assert (bases, bad) == (seq, -1)
    assert dna_counts(bases) == dna_counts(bases, np.empty(5000, np.uint8)) == base_stats(seq)[:2]
    assert dna_counts(bases) == (sum(c in b"Nn" for c in seq), sum(c in b"acgtn" for c in seq))
    broken = raw[:1000] + b"R" + raw[1000:]  # base offset 1000 - 16 line ends before it
    bases, bad = clean_bases(broken, iupac_to_n=iupac_to_n)
    assert bad == (-1 if iupac_to_n else 1000 - 16)
    assert len(bases) == len(seq) + 1
    assert clean_bases(b"AC\r\nG>T\n")[1] == 3


def test_base_stats_counts_stay_exact_next_to_a_bad_byte():
    seq = b"NNnaX{"
    assert base_stats(seq) == (3, 3, 4)

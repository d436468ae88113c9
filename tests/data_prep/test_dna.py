"""Vectorised DNA checks and counts against a plain Python count."""

import numpy as np
import pytest

from data_prep.dna import base_stats, first_non_dna, is_dna, strip_line_ends


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

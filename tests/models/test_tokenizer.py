import numpy as np
import pytest
import torch

from models import tokenizer as tok


def test_ids_match_hyenadna_layout():
    assert tok.VOCAB == ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]", "A", "C", "G", "T", "N")
    assert tok.VOCAB_SIZE == 12 and tok.PADDED_VOCAB_SIZE == 16
    assert tok.encode("ACGTN").tolist() == [7, 8, 9, 10, 11]


def test_lower_case_maps_to_same_ids_and_mask_travels_separately():
    seq = b"ACgtNn"
    assert tok.encode(seq).tolist() == [7, 8, 9, 10, 11, 11]
    assert tok.soft_mask(seq).tolist() == [False, False, True, True, False, True]


def test_unknown_bytes_become_unk_or_raise_in_strict_mode():
    assert tok.encode("ARN").tolist() == [7, tok.UNK_ID, 11]
    with pytest.raises(ValueError, match=r"'R' at offset 1"):
        tok.encode("ARN", strict=True)


def test_decode_round_trip_and_specials():
    assert tok.decode(tok.encode("acgTN")) == "ACGTN"
    with pytest.raises(ValueError, match="not a base"):
        tok.decode(np.array([0, 7]))
    assert tok.decode_tokens([0, 7, 4]) == ["[CLS]", "A", "[PAD]"]


def test_reverse_complement_is_an_involution_and_keeps_case():
    assert tok.reverse_complement("AACgtN") == "NacGTT"
    assert tok.reverse_complement(b"acgt") == b"acgt"
    rng = np.random.default_rng(0)
    ids = rng.integers(7, 12, size=(3, 101))
    rc = tok.reverse_complement_ids(ids)
    assert (tok.reverse_complement_ids(rc) == ids).all()
    t = torch.from_numpy(ids)
    assert torch.equal(tok.reverse_complement_ids(t), torch.from_numpy(rc))
    # complement of the ids equals the ids of the complemented bases
    seq = "ACGTNacgtn"
    assert tok.encode(tok.reverse_complement(seq)).tolist() == tok.reverse_complement_ids(tok.encode(seq)).tolist()


def test_specials_are_not_complemented():
    ids = np.array([0, 4, 7, 8])
    assert tok.complement_ids(ids).tolist() == [0, 4, 10, 9]


def test_character_tokenizer_padding():
    t = tok.CharacterTokenizer()
    out = t("ACG", max_length=6, add_special_tokens=True)
    assert out.tolist() == [4, 0, 7, 8, 9, 1]
    with pytest.raises(ValueError, match="longer than max_length"):
        t("ACGTACGT", max_length=4)
    assert t("ACGTACGT", max_length=4, truncation=True).tolist() == [7, 8, 9, 10]


def test_byte_tables_for_bulk_lookups():
    ids = tok.byte_to_id_table()
    assert ids.dtype == np.int64 and ids[ord("a")] == ids[ord("A")] == tok.A_ID and ids[ord("*")] == tok.UNK_ID
    comp = tok.complement_byte_table()
    assert bytes(comp[np.frombuffer(b"ACGTNacgtn*", dtype=np.uint8)]) == b"TGCANtgcan*"
    ids[0] = 99  # fresh copies: callers may change them
    assert tok.byte_to_id_table()[0] == tok.UNK_ID

"""Character tokenizer for DNA, compatible with HyenaDNA and Caduceus checkpoints (DESIGN §2).

Ids: ``[CLS]=0 [SEP]=1 [BOS]=2 [MASK]=3 [PAD]=4 [RESERVED]=5 [UNK]=6 A=7 C=8 G=9 T=10 N=11``; 12 tokens,
embedding rows padded to a multiple of 8 (16). Lower-case (soft-masked) bases map to the same ids as upper
case; the soft mask is extracted separately (:func:`soft_mask`) so that a loss weight for repeats is possible.

Everything here is a table look-up over whole arrays (no per-character Python), so the data loader can
tokenise a 1M-base window in about a millisecond. Sequences are accepted as ``bytes``, ``str``, or ``uint8``
numpy arrays of ASCII codes; id arrays as numpy arrays or torch tensors (the type is preserved).
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

SPECIAL_TOKENS = ("[CLS]", "[SEP]", "[BOS]", "[MASK]", "[PAD]", "[RESERVED]", "[UNK]")
BASES = "ACGTN"
VOCAB = SPECIAL_TOKENS + tuple(BASES)
VOCAB_SIZE = len(VOCAB)  # 12
PAD_VOCAB_MULTIPLE = 8

CLS_ID, SEP_ID, BOS_ID, MASK_ID, PAD_ID, RESERVED_ID, UNK_ID = range(7)
A_ID, C_ID, G_ID, T_ID, N_ID = range(7, 12)


def padded_vocab_size(vocab_size: int = VOCAB_SIZE, multiple: int = PAD_VOCAB_MULTIPLE) -> int:
    """Embedding rows: ``vocab_size`` rounded up to a multiple of ``multiple`` (12 -> 16)."""
    if vocab_size < 1 or multiple < 1:
        raise ValueError(f"vocab_size and multiple must be >= 1, got {vocab_size}, {multiple}")
    return -(-vocab_size // multiple) * multiple


PADDED_VOCAB_SIZE = padded_vocab_size()

# ASCII byte -> token id. Unknown bytes map to [UNK] (as HyenaDNA's CharacterTokenizer does).
_ENCODE = np.full(256, UNK_ID, dtype=np.uint8)
for _i, _b in enumerate(BASES):
    _ENCODE[ord(_b)] = A_ID + _i
    _ENCODE[ord(_b.lower())] = A_ID + _i

# token id -> ASCII byte (specials decode to '?' in the per-base string form; see decode()).
_DECODE = np.frombuffer(b"???????ACGTN", dtype=np.uint8).copy()

# token id -> id of the complement base (specials map to themselves).
_COMPLEMENT_IDS = np.arange(PADDED_VOCAB_SIZE, dtype=np.int64)
_COMPLEMENT_IDS[[A_ID, C_ID, G_ID, T_ID, N_ID]] = [T_ID, G_ID, C_ID, A_ID, N_ID]
_COMPLEMENT_IDS_T = torch.from_numpy(_COMPLEMENT_IDS)

# ASCII byte -> complement byte, case preserved (a<->t, c<->g, n->n); other bytes map to themselves.
_COMPLEMENT_BYTES = np.arange(256, dtype=np.uint8)
for _x, _y in ("AT", "TA", "CG", "GC", "NN"):
    _COMPLEMENT_BYTES[ord(_x)] = ord(_y)
    _COMPLEMENT_BYTES[ord(_x.lower())] = ord(_y.lower())

# Bytes that data preparation accepts as DNA (upper and lower case A, C, G, T, N).
DNA_BYTES = np.zeros(256, dtype=bool)
DNA_BYTES[np.frombuffer(b"ACGTNacgtn", dtype=np.uint8)] = True
_ACGT_BYTES = np.zeros(256, dtype=bool)
_ACGT_BYTES[np.frombuffer(b"ACGTacgt", dtype=np.uint8)] = True

SeqLike = Union[bytes, bytearray, memoryview, str, np.ndarray]
IdsLike = Union[np.ndarray, torch.Tensor]


def as_bytes_array(seq: SeqLike) -> np.ndarray:
    """View a sequence as a ``uint8`` numpy array of ASCII codes (no copy for bytes / arrays)."""
    if isinstance(seq, np.ndarray):
        if seq.dtype != np.uint8:
            raise ValueError(f"a sequence array must hold uint8 ASCII codes, got dtype {seq.dtype}")
        return seq
    if isinstance(seq, str):
        try:
            seq = seq.encode("ascii")
        except UnicodeEncodeError as err:
            raise ValueError(f"sequence is not ASCII at offset {err.start}: {seq[err.start]!r}") from None
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return np.frombuffer(seq, dtype=np.uint8)
    raise TypeError(f"expected bytes, str or a uint8 array, got {type(seq).__name__}")


def encode(seq: SeqLike, *, strict: bool = False, dtype=np.int64) -> np.ndarray:
    """Token ids of a DNA sequence; case-insensitive.

    With ``strict=True`` a byte that is not A/C/G/T/N (either case) raises ``ValueError`` naming its offset;
    otherwise it becomes ``[UNK]``.
    """
    arr = as_bytes_array(seq)
    if strict:
        bad = np.flatnonzero(~DNA_BYTES[arr])
        if bad.size:
            off = int(bad[0])
            raise ValueError(
                f"non-DNA character {chr(arr[off])!r} at offset {off} ({bad.size} such characters); "
                "only A, C, G, T, N (either case) are allowed"
            )
    return _ENCODE[arr].astype(dtype, copy=False)


def encode_tensor(seq: SeqLike, *, strict: bool = False) -> torch.Tensor:
    """:func:`encode` as an int64 torch tensor."""
    return torch.from_numpy(encode(seq, strict=strict, dtype=np.int64))


def decode(ids: IdsLike) -> str:
    """Bases of a 1-D id array. Special tokens raise ``ValueError`` (use :func:`decode_tokens` for those)."""
    arr = _to_numpy(ids).reshape(-1)
    bad = np.flatnonzero((arr < A_ID) | (arr > N_ID))
    if bad.size:
        raise ValueError(
            f"id {int(arr[bad[0]])} at position {int(bad[0])} is not a base (bases are {A_ID}..{N_ID}); "
            "use decode_tokens() to render special tokens"
        )
    return _DECODE[arr].tobytes().decode("ascii")


def decode_tokens(ids: IdsLike) -> list[str]:
    """Token strings of a 1-D id array, special tokens included."""
    arr = _to_numpy(ids).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"token ids must lie in [0, {VOCAB_SIZE}), got range [{arr.min()}, {arr.max()}]")
    return [VOCAB[i] for i in arr.tolist()]


def byte_to_id_table(dtype=np.int64) -> np.ndarray:
    """A fresh 256-entry table ASCII byte -> token id (what :func:`encode` applies), for bulk look-ups."""
    return _ENCODE.astype(dtype)


def complement_byte_table() -> np.ndarray:
    """A fresh 256-entry table ASCII byte -> complement byte, case kept (a<->t, c<->g, n->n)."""
    return _COMPLEMENT_BYTES.copy()


def soft_mask(seq: SeqLike) -> np.ndarray:
    """Boolean array, True where the base is lower case (soft-masked repeat)."""
    arr = as_bytes_array(seq)
    return (arr >= ord("a")) & (arr <= ord("z"))


def acgt_count(seq: SeqLike) -> int:
    """Number of A/C/G/T bases (either case) in ``seq``."""
    return int(_ACGT_BYTES[as_bytes_array(seq)].sum())


def complement_ids(ids: IdsLike) -> IdsLike:
    """Complement of every base id (A<->T, C<->G, N->N); special tokens are unchanged."""
    if isinstance(ids, torch.Tensor):
        return _COMPLEMENT_IDS_T.to(ids.device)[ids.long()].to(ids.dtype)
    return _COMPLEMENT_IDS[ids].astype(np.asarray(ids).dtype, copy=False)


def reverse_complement_ids(ids: IdsLike) -> IdsLike:
    """Reverse complement along the last dimension (an involution)."""
    comp = complement_ids(ids)
    if isinstance(comp, torch.Tensor):
        return comp.flip(-1)
    return np.ascontiguousarray(comp[..., ::-1])


def reverse_complement(seq: SeqLike) -> SeqLike:
    """Reverse complement of a base sequence, keeping case (``acgtN`` -> ``NacgT``); same type as the input."""
    arr = as_bytes_array(seq)
    out = _COMPLEMENT_BYTES[arr[::-1]]
    if isinstance(seq, str):
        return out.tobytes().decode("ascii")
    if isinstance(seq, (bytes, bytearray, memoryview)):
        return out.tobytes()
    return out


def _to_numpy(ids: IdsLike) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        return ids.detach().cpu().numpy()
    return np.asarray(ids)


class CharacterTokenizer:
    """Object form of this module for downstream code that expects a tokenizer instance.

    ``tok(seq)`` returns int64 ids; ``tok(seq, max_length=n, add_special_tokens=True)`` adds ``[CLS]``/``[SEP]``
    the way HyenaDNA's fine-tuning code does and left-pads with ``[PAD]`` to ``max_length`` (longer inputs
    raise ``ValueError``; pass ``truncation=True`` to keep the last ``max_length`` tokens instead).
    """

    vocab = VOCAB
    vocab_size = VOCAB_SIZE
    padded_vocab_size = PADDED_VOCAB_SIZE
    pad_token_id = PAD_ID
    cls_token_id = CLS_ID
    sep_token_id = SEP_ID
    unk_token_id = UNK_ID
    mask_token_id = MASK_ID

    def __call__(
        self,
        seq: SeqLike,
        *,
        max_length: int | None = None,
        add_special_tokens: bool = False,
        truncation: bool = False,
        padding_side: str = "left",
    ) -> np.ndarray:
        ids = encode(seq)
        if add_special_tokens:
            ids = np.concatenate([[CLS_ID], ids, [SEP_ID]]).astype(np.int64)
        if max_length is None:
            return ids
        if len(ids) > max_length:
            if not truncation:
                raise ValueError(
                    f"sequence of {len(ids)} tokens is longer than max_length={max_length}; "
                    "pass truncation=True or raise max_length"
                )
            ids = ids[-max_length:]
        pad = np.full(max_length - len(ids), PAD_ID, dtype=np.int64)
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        return np.concatenate([pad, ids] if padding_side == "left" else [ids, pad])

    encode = staticmethod(encode)
    decode = staticmethod(decode)

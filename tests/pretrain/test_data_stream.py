"""WindowStream on real GRCh38 shards: content, exactly-once coverage over ranks x workers, sequence-parallel
slices, determinism, exact resume with workers, reverse complement, evaluation passes, errors."""

import numpy as np
import pyfaidx
import pytest
import torch

from data_prep.prep import PrepConfig, prepare
from models import tokenizer as tok
from pretrain.data import WindowStream


CHUNK = 20_001


@pytest.fixture(scope="module")
def shards(hg38_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("stream") / "shards"
    prepare(PrepConfig(fasta=hg38_subset, out=out, valid_chroms=["chr20"], test_chroms=["chrM"], chunk_len=CHUNK,
                       shard_size=500_000, progress=False), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def genome(hg38_subset):
    return pyfaidx.Fasta(str(hg38_subset), as_raw=True)


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_batches_are_the_genome_with_shifted_labels_and_loss_mask(shards, genome):
    stream = WindowStream(shards, seq_len=1000, micro_batch=4, soft_mask_weight=0.25, return_windows=True)
    for batch in _take(stream, 5):
        assert batch["input_ids"].shape == batch["labels"].shape == batch["loss_mask"].shape == (4, 1000)
        assert batch["input_ids"].dtype == batch["labels"].dtype == torch.int64
        assert batch["loss_mask"].dtype == torch.float32
        assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
        for row, (sample, start, avail, rc) in enumerate(batch["windows"].tolist()):
            ref = stream.samples[sample]
            bases = genome[ref.chrom][ref.start + start:ref.start + start + avail]
            assert avail == 1001 and rc == 0
            assert tok.decode(batch["input_ids"][row]) + tok.decode(batch["labels"][row, -1:]) == bases.upper()
            targets = np.frombuffer(bases[1:].encode(), dtype=np.uint8)
            want = np.where(np.isin(targets, list(b"Nn")), 0.0, np.where(targets >= ord("a"), 0.25, 1.0))
            assert np.array_equal(batch["loss_mask"][row].numpy(), want.astype(np.float32))


def test_exactly_once_over_two_ranks_and_two_workers(shards):
    seen, counts = [], []
    for rank in range(2):
        stream = WindowStream(shards, seq_len=4000, micro_batch=4, dp_rank=rank, dp_size=2, num_workers=2,
                              epochs=1, drop_remainder=True, seed=7, return_windows=True)
        batches = list(stream)
        counts.append(len(batches))
        assert len(batches) == stream.batches_per_epoch()
        seen += [tuple(w[:2]) for b in batches for w in b["windows"].tolist()]
    stats = stream.stats()
    assert counts[0] == counts[1] == stats["windows"] // 8
    assert len(seen) == len(set(seen)) == stats["windows_dealt"]
    assert stats["windows_dealt"] + stats["windows_not_dealt"] == stats["windows"]


def test_sequence_parallel_ranks_get_slices_of_the_same_windows(shards):
    kw = dict(split="valid", seq_len=20_000, micro_batch=2, rc_prob=0.5, soft_mask_weight=0.5, shuffle=False,
              epochs=1, seed=3)
    whole = list(WindowStream(shards, **kw))
    parts = [list(WindowStream(shards, sp_rank=r, sp_size=4, **kw)) for r in range(4)]
    assert all(len(p) == len(whole) for p in parts)
    for i, batch in enumerate(whole):
        for key in ("input_ids", "labels", "loss_mask"):
            assert parts[0][i][key].shape == (2, 5000)
            assert torch.equal(torch.cat([p[i][key] for p in parts], dim=1), batch[key])
    # the last chunk of chr20 (19,851 bases) gives a padded window: PAD ids, zero loss on padding
    last = whole[-1]
    assert (last["input_ids"] == tok.PAD_ID).any() and (last["loss_mask"][last["labels"] == tok.PAD_ID] == 0).all()


def test_same_seed_same_batches_other_seed_other_batches(shards):
    a = _take(WindowStream(shards, seq_len=1000, micro_batch=3, seed=11, rc_prob=0.5), 4)
    b = _take(WindowStream(shards, seq_len=1000, micro_batch=3, seed=11, rc_prob=0.5, num_workers=2), 4)
    c = _take(WindowStream(shards, seq_len=1000, micro_batch=3, seed=12, rc_prob=0.5), 4)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert not _same(a[0], c[0])


def test_resume_mid_epoch_with_workers_gives_the_uninterrupted_batches(shards):
    kw = dict(split="train", seq_len=8000, micro_batch=4, seed=5, rc_prob=0.5, dp_rank=1, dp_size=2)
    reference = WindowStream(shards, num_workers=2, **kw)
    per_epoch = reference.batches_per_epoch()
    want = _take(reference, per_epoch + 6)  # crosses an epoch boundary
    first = WindowStream(shards, num_workers=2, **kw)
    got = _take(first, per_epoch - 3)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["batch"] == per_epoch - 3
    resumed = WindowStream(shards, num_workers=2, **kw)
    resumed.load_state_dict(state)
    got += _take(resumed, 9)
    assert resumed.epoch == 1
    assert len(got) == len(want) and all(_same(x, y) for x, y in zip(got, want))
    other_workers = WindowStream(shards, num_workers=0, **kw)  # the order does not depend on num_workers
    other_workers.load_state_dict(state)
    assert all(_same(x, y) for x, y in zip(_take(other_workers, 9), want[per_epoch - 3:]))


def test_reverse_complement_windows_are_the_complemented_reverse(shards):
    kw = dict(split="train", seq_len=1000, micro_batch=8, seed=2, soft_mask_weight=0.5, return_windows=True)
    fwd, = _take(WindowStream(shards, rc_prob=0.0, **kw), 1)
    rev, = _take(WindowStream(shards, rc_prob=1.0, **kw), 1)
    assert torch.equal(fwd["windows"][:, :3], rev["windows"][:, :3]) and rev["windows"][:, 3].all()
    full_f = torch.cat([fwd["input_ids"], fwd["labels"][:, -1:]], dim=1)
    full_r = torch.cat([rev["input_ids"], rev["labels"][:, -1:]], dim=1)
    assert torch.equal(tok.reverse_complement_ids(full_f), full_r)
    assert torch.equal(tok.reverse_complement_ids(full_r), full_f)  # an involution
    # weights travel with their complemented bases (lower case stays lower case): RC target x is original
    # position L - 1 - x, whose weight the forward stream gives as the target of position L - 2 - x
    assert torch.equal(rev["loss_mask"][:, :-1], fwd["loss_mask"][:, :-1].flip(1))
    assert (fwd["loss_mask"] == 0.5).any() and (fwd["loss_mask"] == 1).any()


def test_evaluation_pass_sees_every_window_once_and_can_repeat(shards):
    stream = WindowStream(shards, "test", seq_len=1000, micro_batch=3, dp_rank=0, dp_size=2, epochs=1,
                          shuffle=False, return_windows=True)
    other = WindowStream(shards, "test", seq_len=1000, micro_batch=3, dp_rank=1, dp_size=2, epochs=1,
                         shuffle=False, return_windows=True)
    stats = stream.stats()
    assert stats["windows"] == 16 and stream.batches_per_epoch() == 3 and stats["filler_rows"] == 2
    batches = list(stream) + list(other)
    rows = [w for b in batches for w in b["windows"].tolist()]
    real = [tuple(w[:2]) for w in rows if w[0] >= 0]
    assert sorted(real) == [(0, 1000 * k) for k in range(16)]
    for b in batches:  # filler rows are padding with zero loss
        filler = b["windows"][:, 0] < 0
        assert (b["input_ids"][filler] == tok.PAD_ID).all() and (b["loss_mask"][filler] == 0).all()
    assert all(_same(x, y) for x, y in zip(list(stream), batches[:3]))  # a second pass repeats the first


def test_set_seq_len_switches_stage_at_an_epoch_boundary_and_resumes(shards):
    stream = WindowStream(shards, seq_len=1000, micro_batch=2, seed=1)
    old = iter(stream)
    next(old)
    stream.set_seq_len(4000, micro_batch=1)
    with pytest.raises(RuntimeError, match="call iter"):
        next(old)
    assert (stream.epoch, stream.seq_len, stream.micro_batch) == (1, 4000, 1)
    state = stream.state_dict()
    a = _take(stream, 3)
    assert a[0]["input_ids"].shape == (1, 4000)
    again = WindowStream(shards, seq_len=1000, micro_batch=2, seed=1)
    again.load_state_dict(state)
    assert all(_same(x, y) for x, y in zip(_take(again, 3), a))


def test_bad_settings_are_clear_errors(shards):
    with pytest.raises(ValueError, match=f"seq_len {CHUNK} is longer than chunk_len - 1 = {CHUNK - 1}.*--chunk-len"):
        WindowStream(shards, seq_len=CHUNK, micro_batch=1)
    stream = WindowStream(shards, seq_len=CHUNK - 1, micro_batch=1)
    with pytest.raises(ValueError, match="longer than chunk_len - 1"):
        stream.set_seq_len(CHUNK + 10)
    with pytest.raises(ValueError, match="not divisible by the sequence-parallel degree 4"):
        WindowStream(shards, seq_len=1002, micro_batch=1, sp_size=4)
    with pytest.raises(ValueError, match="has no split 'nope'; it has train, valid, test"):
        WindowStream(shards, "nope", seq_len=100, micro_batch=1)
    with pytest.raises(ValueError, match="fewer than dp_size x micro_batch"):
        WindowStream(shards, "test", seq_len=16_000, micro_batch=2)
    with pytest.raises(ValueError, match="dp_rank < dp_size"):
        WindowStream(shards, seq_len=100, micro_batch=1, dp_rank=2, dp_size=2)
    state = WindowStream(shards, seq_len=100, micro_batch=1, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1 but this stream has 2"):
        WindowStream(shards, seq_len=100, micro_batch=1, seed=2).load_state_dict(state)


def test_damaged_shard_is_named_through_the_workers(shards, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    victim = copy / "valid" / "shard-000000.tar"
    data = bytearray(victim.read_bytes())
    data[4000:4100] = b"\xff" * 100
    victim.write_bytes(bytes(data))
    stream = WindowStream(copy, "valid", seq_len=20_000, micro_batch=2, shuffle=False, num_workers=1)
    with pytest.raises(Exception, match=f"shard {victim} is corrupted"):
        list(zip(range(3), stream))

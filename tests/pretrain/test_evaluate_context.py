"""``python -m pretrain.evaluate --context-lens``: the same final targets of every window are scored at each
context length (checked against a direct forward on the slice), and a JSON and a PNG are written."""

import json

import pytest
import torch

from data_prep.prep import PrepConfig, prepare
from models import build_model
from pretrain.data import WindowStream
from pretrain.evaluate import context_perplexity, main
from pretrain.loss import token_losses

LENS = [64, 128, 512]


@pytest.fixture(scope="module")
def shards(hg38_subset, tmp_path_factory):
    """Real GRCh38: chr20 train, chrM (16,569 bases) test, in chunks of 4,097 bases."""
    out = tmp_path_factory.mktemp("ctx_shards")
    prepare(PrepConfig(fasta=hg38_subset, out=out, chroms=["chr20", "chrM"], test_chroms=["chrM"], chunk_len=4097,
                       progress=False), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model({"arch": "hyena", "d_model": 32, "n_layer": 2, "l_max": 512})
    out = tmp_path_factory.mktemp("ctx_model")
    model.save_pretrained(out)
    return out


def test_cli_writes_json_and_png_with_identical_positions(model_dir, shards, tmp_path, capsys):
    out = tmp_path / "ctx" / "ppl.json"
    rc = main([str(model_dir), "--data", str(shards), "--split", "test", "--context-lens", "512,64,128",
               "--targets", "32", "--batch-size", "4", "--max-batches", "3", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert [r["context_len"] for r in rows] == LENS
    assert report["targets"] == 32 and report["window_len"] == 512 and report["split"] == "test"
    assert report["windows"] == 3 * 4 and report["batches"] == 3
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["tokens"] == report["windows"] * 32
    assert len({r["positions_sha256"] for r in rows}) == 1
    assert all(1.0 < r["ppl"] < 100 for r in rows)  # a random model: about uniform over the 16 logits
    png = out.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["context_len"] for p in printed] == LENS


def test_each_length_scores_the_last_targets_from_its_own_context(model_dir, shards):
    from models import from_pretrained

    model = from_pretrained(model_dir).float().eval()
    report = context_perplexity(model, shards, split="test", context_lens=LENS, targets=16, batch_size=4,
                                max_batches=1)
    # The same numbers by hand: first batch of whole 512-base windows, last 16 targets, last c tokens as input.
    batch = next(iter(WindowStream(shards, "test", seq_len=512, micro_batch=4, shuffle=False, epochs=1)))
    for row in report["results"]:
        c = row["context_len"]
        with torch.no_grad():
            losses = token_losses(model(batch["input_ids"][:, 512 - c:]), batch["labels"][:, 512 - c:])[:, -16:]
        weight = batch["loss_mask"][:, -16:].double()
        assert row["tokens"] == int(weight.sum()) == 64
        assert row["loss"] == pytest.approx(float((losses.double() * weight).sum() / weight.sum()), rel=1e-6)
    losses = [r["loss"] for r in report["results"]]
    assert len(set(losses)) == 3  # the context does change the prediction
    other = context_perplexity(model, shards, split="test", context_lens=LENS, targets=8, batch_size=4,
                               max_batches=1)
    assert other["results"][0]["positions_sha256"] != report["results"][0]["positions_sha256"]


def test_seq_lens_still_work_and_bad_options_are_clear(model_dir, shards, tmp_path, capsys):
    out = tmp_path / "seq.json"
    rc = main([str(model_dir), "--data", str(shards), "--split", "test", "--seq-lens", "128", "--max-batches", "2",
               "--out", str(out)])
    assert rc == 0 and json.loads(out.read_text())[0]["seq_len"] == 128
    for bad, message in ((["--context-lens", "64,1024"], "exceeds the model's l_max 512"),
                         (["--context-lens", "64,128", "--targets", "65"], "--targets must lie in [1, smallest"),
                         (["--context-lens", "64", "--seq-lens", "64"], "not both"),
                         (["--context-lens", "64,x"], "comma-separated integers")):
        with pytest.raises(SystemExit):
            main([str(model_dir), "--data", str(shards), "--split", "test", "--out", str(tmp_path / "b.json"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()

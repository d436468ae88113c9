"""Bad input is refused with exit code 2 and a message saying what is wrong, before anything is written."""

from __future__ import annotations

import gzip

import pytest
from conftest import tiny_args

from finetune.main import main
from models import build_model


def _refused(capsys, args: list[str], message: str, run_dir) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not run_dir.exists(), "a refused run wrote its run directory"


@pytest.mark.parametrize("content, message", [
    ("seq\tlabel\nACGTACGT\t1\nACGTAAAA\n", "the label is missing"),
    ("seq\tlabel\nACGTACGT\t1\nACGTAAAA\tpromoter\n", "is not a non-negative integer"),
    ("seq\tlabel\n", "empty split"),
])
def test_bad_training_files(tmp_path, gb_files, capsys, content, message):
    bad = tmp_path / "bad.tsv"
    bad.write_text(content)
    _refused(capsys, tiny_args(tmp_path, "r", bad, gb_files["test"]), message, tmp_path / "r")


def test_an_unreadable_file(tmp_path, gb_files, capsys):
    broken = tmp_path / "broken.tsv.gz"
    broken.write_bytes(gzip.compress(gb_files["train"].read_bytes())[:100])
    _refused(capsys, tiny_args(tmp_path, "r", broken, gb_files["test"]), "cannot read", tmp_path / "r")
    _refused(capsys, tiny_args(tmp_path, "r", tmp_path / "absent.tsv", gb_files["test"]), "no such file",
             tmp_path / "r")


def test_sequences_longer_than_the_backbone_l_max(tmp_path, gb_files, capsys):
    _refused(capsys, tiny_args(tmp_path, "r", gb_files["small"], gb_files["test"], **{"model.l_max": 128}),
             "exceed the backbone's l_max=128", tmp_path / "r")
    # soft prompts count against l_max too: 251 bases + 8 prompts > 256
    _refused(capsys, tiny_args(tmp_path, "r", gb_files["small"], gb_files["test"], **{
        "tuning.mode": "soft_prompt", "tuning.num_prompts": 8}), "8 soft prompts", tmp_path / "r")


def test_a_head_on_a_backbone_of_another_vocabulary(tmp_path, gb_files, capsys):
    other = tmp_path / "other_vocab"
    build_model(dict(d_model=16, n_layer=1, l_max=256, vocab_size=16)).save_pretrained(other)
    _refused(capsys, tiny_args(tmp_path, "r", gb_files["small"], gb_files["test"], **{
        "backbone.source": "pretrained", "backbone.path": other}), "vocabulary of 16 tokens", tmp_path / "r")


def test_config_mistakes_name_the_key(tmp_path, gb_files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_args(tmp_path, "r", gb_files["small"], gb_files["test"], **{"head.poling": "mean"}))
    assert exit_info.value.code == 2
    assert "pooling" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(tiny_args(tmp_path, "r", gb_files["small"], gb_files["test"], **{"tuning.num_prompts": 4}))
    assert "soft_prompt" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bf16_without_zero_is_refused(tmp_path, gb_files, capsys):
    args = tiny_args(tmp_path, "r", gb_files["train"], gb_files["test"],
                     **{"train.precision": "bf16", "parallel.zero_stage": 0})
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "train.precision=bf16 with parallel.zero_stage=0 is not supported" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(args[:-1] + ["parallel.zero_stage=1", "--print-config"]) == 0  # the way out it names is accepted

"""The typed config: YAML + dotted overrides, unknown keys, types, cross-field rules, round trip."""

import pytest

from pretrain.args import apply_override, dump_yaml, load_yaml, parse_args, resolve
from pretrain.config import Config
from pretrain.ds_config import build_ds_config, merge
from pretrain.schedule import Stage

BASE = ["data.path=shards"]


def test_precedence_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("run: {name: a}\ndata: {path: shards}\ntrain:\n  lr: 6e-4\n  max_steps: 50\n")
    cfg = resolve(path, ["train.lr=3e-4", "model.arch=mamba"])
    assert (cfg.run.name, cfg.train.lr, cfg.train.max_steps, cfg.model.arch) == ("a", 3e-4, 50, "mamba")
    assert cfg.train.eps == Config().train.eps  # untouched keys keep the schema default
    assert isinstance(resolve(path, []).train.lr, float)  # YAML's 6e-4 is a float, not a string


def test_overrides_reach_lists_and_flow_values():
    cfg = resolve(None, BASE + ["model.l_max=4096", "train.seq_len=4096", "train.tokens_per_step=8192",
                                "train.warmup_stages=[{seq_len: 1024, tokens: 1e5}, {seq_len: 2048, epochs: 2}]",
                                "train.warmup_stages.1.epochs=0.5", "train.betas=[0.9,0.95]"])
    assert [s.seq_len for s in cfg.train.warmup_stages] == [1024, 2048]
    assert cfg.train.warmup_stages[1].epochs == 0.5 and cfg.train.betas == [0.9, 0.95]
    data = {"train": {"warmup_stages": [{"seq_len": 1}]}}
    with pytest.raises(ValueError, match="not an index of a list of 1 items"):
        apply_override(data, "train.warmup_stages.3.tokens=5")
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override(data, "train.lr")


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-3", r"unknown key 'train.lrr': did you mean 'train.lr'"),
    ("trian.lr=1e-3", r"unknown key 'trian': did you mean 'train'"),
    ("model.d_modle=64", r"did you mean 'model.d_model'"),
    ("train.max_steps=ten", r"train.max_steps: expected int, got str"),
    ("train.max_steps=true", r"expected int, got bool"),
    ("train.seq_len=2048", r"window length 2048 exceeds model.l_max=1024"),
    ("train.tokens_per_step=1000", r"not a multiple of window length 1024"),
    ("train.precision=fp16", r"train.precision must be one of \['fp32', 'bf16'\]"),
    ("parallel.zero_stage=4", r"parallel.zero_stage must be one of"),
    ("train.precision=bf16", r"train.precision=bf16 with parallel.zero_stage=0 is not supported.*accumulates the "
                             r"gradients in bf16.*use parallel.zero_stage=1"),
    ("parallel.sequence=3", r"window length 1024 is not divisible by parallel.sequence=3"),
    ("train.min_lr=1.0", r"train.min_lr must lie in"),
    ("train.warmup_stages=[{seq_len: 512}]", r"needs exactly one of tokens / epochs"),
    ("train.warmup_stages=[{seq_len: 2048, tokens: 10}]", r"must increase"),
    ("deepspeed.train_batch_size=8", r"set those instead"),
    ("kernels.scan=cuda", r"kernels.scan must be one of"),
    ("model.arch=rnn", r"model.arch must be one of"),
    ("run.name=a/b", r"plain directory name"),
])
def test_config_errors_name_the_key_and_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        resolve(None, BASE + [override])


def test_data_path_is_required():
    with pytest.raises(ValueError, match="data.path is required"):
        resolve(None, [])


def test_resolved_yaml_round_trips(tmp_path):
    cfg = resolve(None, BASE + ["train.warmup_stages=[{seq_len: 512, tokens: 4096}]", "deepspeed={wall_clock_"
                                "breakdown: true}"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg))
    assert resolve(path, []) == cfg
    assert load_yaml(path)["train"]["warmup_stages"] == [{"seq_len": 512, "tokens": 4096.0, "epochs": None}]


def test_command_line_accepts_the_launchers_local_rank(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    cfg, args = parse_args(["--local_rank=1", "--config", str(tmp_path / "empty.yaml"), "data.path=d",
                            "train.max_steps=7"])
    assert args.local_rank == 1 and cfg.train.max_steps == 7
    with pytest.raises(SystemExit):
        parse_args(["data.path=d", "train.max_step=7"])
    assert "did you mean 'train.max_steps'" in capsys.readouterr().err


def test_deepspeed_config_is_generated_then_merged():
    cfg = resolve(None, BASE + ["parallel.zero_stage=2", "train.precision=bf16", "train.grad_clip=0.5",
                                "deepspeed={zero_optimization: {overlap_comm: true}, steps_per_print: 5}"])
    ds = build_ds_config(cfg, Stage(0, 1024, 0, None, micro_batch=4, grad_accum=8), dp=2)
    assert ds["train_batch_size"] == 64 and ds["gradient_accumulation_steps"] == 8
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    assert ds["bf16"]["enabled"] and ds["steps_per_print"] == 5
    assert merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


@pytest.mark.parametrize("overrides, message", [
    (["model.d_model=100", "parallel.sequence=8"], "model.d_model=100 is not divisible by parallel.sequence=8"),
    (["model.arch=transformer", "model.transformer.n_head=6", "model.d_model=96", "parallel.sequence=4"],
     "model.transformer.n_head=6 is not divisible by parallel.sequence=4"),
    (["parallel.sequence=2", "parallel.zero_stage=3"], "parallel.zero_stage=3 with parallel.sequence=2 is not supported"),
    (["model.arch=mamba", "parallel.sequence=512", "train.tokens_per_step=1048576"],
     "leaves 2 positions per rank, fewer than the 3 that the mamba causal convolution needs"),
])
def test_sequence_parallel_errors_come_before_any_process_starts(overrides, message, capsys):
    from pretrain.main import main

    with pytest.raises(SystemExit) as exit_:  # the command line is refused: no process group, no launch
        main(BASE + overrides)
    assert exit_.value.code == 2 and message in capsys.readouterr().err

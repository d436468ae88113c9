"""The fine-tuning app's typed configuration (YAML files under ``configs/finetune/`` are data).

Sections: ``run``, ``parallel``, ``kernels`` and ``deepspeed`` are the training app's own (:mod:`pretrain.config`);
``backbone`` says where the language model comes from, ``head`` and ``tuning`` what is put on it and what trains,
``data`` the task's sequences and ``train`` the optimisation. ``model`` is the backbone's architecture, used only
with ``backbone.source: random`` (the randomly initialised baseline); every other source brings its own.
The checked builder is :func:`models.config.from_dict` (unknown keys name the nearest valid one); :func:`validate`
checks the rules that tie fields together. Precedence, as in pretraining: defaults < YAML < ``a.b=v`` overrides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from models.config import ModelConfig, from_dict
from pretrain.config import (BACKENDS, KERNEL_IMPLS, OWNED_DEEPSPEED_KEYS, PRECISIONS, KernelsConfig, ParallelConfig,
                             RunConfig, check_bf16_zero)

BACKBONE_SOURCES = ("random", "pretrained", "checkpoint", "hyenadna", "mamba_ssm")
POOLINGS = ("mean", "last")
MODES = ("full", "frozen", "soft_prompt")
FORMATS = ("tsv", "intervals", "species")
PADDING_SIDES = ("left", "right")


@dataclass
class BackboneConfig:
    """Where the language model comes from.

    ``source``: ``random`` (fresh weights from the ``model`` section), ``pretrained`` (a ``from_pretrained``
    directory), ``checkpoint`` (a training checkpoint, run or checkpoints directory: ``pretrain.export`` rules),
    ``hyenadna`` / ``mamba_ssm`` (a released checkpoint directory, imported with ``models.convert``).
    ``l_max`` replaces the imported mamba_ssm model's longest input (mamba_ssm configs have none).
    """

    source: str = "random"
    path: str = ""
    trust_pickle: bool = False
    l_max: int | None = None


@dataclass
class HeadConfig:
    """Linear classification head over pooled final hidden states (``mean`` ignores padding and prompts)."""

    pooling: str = "mean"
    dropout: float = 0.0


@dataclass
class TuningConfig:
    """What trains: ``full`` (backbone and head), ``frozen`` (head only), or ``soft_prompt`` (HyenaDNA §4.4:
    ``num_prompts`` learnable embeddings prepended to every input of a frozen backbone; they and the head train)."""

    mode: str = "full"
    num_prompts: int = 0


@dataclass
class FinetuneDataConfig:
    """The task's labelled sequences.

    - ``tsv``: ``seq<TAB>label`` files (gzip or plain, optional ``seq label`` header): ``train``, ``valid``,
      ``test``.
    - ``intervals``: a GenomicBenchmarks dataset directory ``intervals`` (``train|test/<class>.csv[.gz]`` with
      ``id,region,start,end,strand``) resolved against the genome ``fasta``; ``class_names`` fixes the label order
      (default: the class files sorted by name).
    - ``species``: a task directory written by ``python -m data_prep species`` (``task_dir``), streamed by
      ``finetune.species_data.SpeciesStream``; windows of ``seq_len`` bases.

    Without a ``valid`` file, ``valid_fraction`` of train (a seeded draw, fixed by ``run.seed``) is held out.
    ``seq_len`` is the tuning length: every sequence is padded to it (``padding_side``); 0 means the longest
    sequence of the data. ``max_samples`` caps each split (a seeded subset) for quick runs.
    """

    format: str = "tsv"
    train: str = ""
    valid: str = ""
    test: str = ""
    intervals: str = ""
    fasta: str = ""
    class_names: list[str] = field(default_factory=list)
    task_dir: str = ""
    valid_fraction: float = 0.1
    seq_len: int = 0
    padding_side: str = "left"
    rc_prob: float = 0.0
    max_samples: int | None = None


@dataclass
class FinetuneTrainConfig:
    """Optimisation and cadence. The duration is ``max_steps``, or ``epochs`` passes over train (then
    ``max_steps`` is derived from the train size and written into the saved config). Field names follow
    :class:`pretrain.config.TrainConfig` so the training app's optimizer, schedule and DeepSpeed builders serve
    both apps."""

    micro_batch: int = 32
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float | None = None
    lr: float = 6e-4
    min_lr: float = 0.0
    lr_schedule: str = "cosine"
    lr_decay_steps: int | None = None
    lr_warmup_steps: int | None = None
    lr_warmup_fraction: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: str = "fp32"
    log_every: int = 10
    eval_every: int = 0
    eval_batches: int | None = None
    ckpt_every: int = 0
    keep_checkpoints: int = 2

    def schedule_steps(self) -> int:
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    def warmup_steps(self) -> int:
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        return max(1, round(self.lr_warmup_fraction * self.schedule_steps()))

    def resolve_steps(self, num_train: int, dp: int) -> None:
        """Derive ``max_steps`` from ``epochs`` once the number of training sequences is known."""
        if self.max_steps is None:
            per_step = self.micro_batch * self.grad_accum * dp
            self.max_steps = max(1, math.ceil(self.epochs * num_train / per_step))


@dataclass
class FinetuneConfig:
    """A whole fine-tuning run."""

    run: RunConfig = field(default_factory=RunConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)


def build_config(data: dict) -> FinetuneConfig:
    """A checked :class:`FinetuneConfig` from a (merged) dictionary."""
    cfg = from_dict(FinetuneConfig, data)
    cfg.model.validate()
    validate(cfg)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    _require(value in allowed, f"{key} must be one of {list(allowed)}, got {value!r}")


def validate(cfg: FinetuneConfig) -> None:
    """Cross-field rules; each violation raises ``ValueError`` naming the keys and what to change."""
    name = cfg.run.name
    _require(bool(name) and "/" not in name and name not in (".", ".."),
             f"run.name must be a plain directory name (no '/'), got {name!r}")
    b, d, t, tu = cfg.backbone, cfg.data, cfg.train, cfg.tuning
    _one_of(b.source, BACKBONE_SOURCES, "backbone.source")
    _require(b.source == "random" or bool(b.path), f"backbone.source={b.source} needs backbone.path")
    _one_of(cfg.head.pooling, POOLINGS, "head.pooling")
    _require(0.0 <= cfg.head.dropout < 1.0, f"head.dropout must lie in [0, 1), got {cfg.head.dropout}")
    _one_of(tu.mode, MODES, "tuning.mode")
    _require(tu.num_prompts >= 0, f"tuning.num_prompts must be >= 0, got {tu.num_prompts}")
    _require((tu.mode == "soft_prompt") == (tu.num_prompts > 0),
             f"tuning.num_prompts={tu.num_prompts} with tuning.mode={tu.mode}: soft prompts need mode soft_prompt "
             f"and num_prompts >= 1 (other modes take none)")
    _validate_data(d)
    _require((t.max_steps is None) != (t.epochs is None),
             f"set exactly one of train.max_steps and train.epochs (the duration), got max_steps={t.max_steps} "
             f"epochs={t.epochs}")
    _require(t.max_steps is None or t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    _require(t.epochs is None or t.epochs > 0, f"train.epochs must be positive, got {t.epochs}")
    _require(d.format != "species" or t.max_steps is not None,
             "data.format=species streams windows without end: set train.max_steps instead of train.epochs")
    for key in ("micro_batch", "grad_accum", "log_every", "keep_checkpoints"):
        _require(getattr(t, key) >= 1, f"train.{key} must be >= 1, got {getattr(t, key)}")
    for key in ("eval_every", "ckpt_every"):
        _require(getattr(t, key) >= 0, f"train.{key} must be >= 0 (0 = only at the end), got {getattr(t, key)}")
    _require(t.eval_batches is None or t.eval_batches >= 1, "train.eval_batches must be >= 1 or null (all)")
    _require(t.lr > 0 and 0 <= t.min_lr <= t.lr, f"need train.lr > 0 and 0 <= train.min_lr <= train.lr, got "
             f"lr={t.lr} min_lr={t.min_lr}")
    _one_of(t.lr_schedule, ("cosine", "constant"), "train.lr_schedule")
    _require(len(t.betas) == 2 and all(0.0 <= x < 1.0 for x in t.betas), "train.betas: two numbers in [0, 1)")
    _require(t.weight_decay >= 0 and t.grad_clip >= 0 and t.eps > 0, "train.weight_decay and train.grad_clip must be "
             ">= 0 and train.eps > 0")
    _one_of(t.precision, PRECISIONS, "train.precision")
    _one_of(cfg.parallel.zero_stage, (0, 1, 2, 3), "parallel.zero_stage")
    check_bf16_zero(t.precision, cfg.parallel.zero_stage)
    _one_of(cfg.parallel.backend, BACKENDS, "parallel.backend")
    _require(cfg.parallel.sequence == 1, "parallel.sequence must be 1 for fine-tuning (whole sequences per rank)")
    _require(cfg.parallel.tensor == 1, "parallel.tensor must be 1 for fine-tuning (no tensor parallelism there)")
    _one_of(cfg.kernels.fftconv, KERNEL_IMPLS, "kernels.fftconv")
    _one_of(cfg.kernels.scan, KERNEL_IMPLS, "kernels.scan")
    for key in OWNED_DEEPSPEED_KEYS:
        _require(key not in cfg.deepspeed, f"deepspeed.{key} is generated from train.micro_batch / train.grad_accum")


def _validate_data(d: FinetuneDataConfig) -> None:
    _one_of(d.format, FORMATS, "data.format")
    _one_of(d.padding_side, PADDING_SIDES, "data.padding_side")
    _require(0.0 <= d.rc_prob <= 1.0, f"data.rc_prob must lie in [0, 1], got {d.rc_prob}")
    _require(0.0 <= d.valid_fraction < 1.0, f"data.valid_fraction must lie in [0, 1), got {d.valid_fraction}")
    _require(d.seq_len >= 0, f"data.seq_len must be >= 0 (0 = the longest sequence), got {d.seq_len}")
    _require(d.max_samples is None or d.max_samples >= 1, "data.max_samples must be >= 1 or null")
    if d.format == "tsv":
        _require(bool(d.train) and bool(d.test), "data.format=tsv needs data.train and data.test (seq<TAB>label "
                 "files); data.valid is optional")
        _require(bool(d.valid) or d.valid_fraction > 0, "no data.valid file: set data.valid_fraction > 0")
    elif d.format == "intervals":
        _require(bool(d.intervals) and bool(d.fasta), "data.format=intervals needs data.intervals (a "
                 "GenomicBenchmarks dataset directory) and data.fasta (the genome it refers to)")
        _require(d.valid_fraction > 0, "data.format=intervals holds out data.valid_fraction of train: set it > 0")
    else:
        _require(bool(d.task_dir), "data.format=species needs data.task_dir (written by python -m data_prep species)")
        _require(d.seq_len >= 1, "data.format=species needs data.seq_len (the window length)")

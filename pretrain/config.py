"""The training app's typed configuration: the only schema of every key (YAML files are data).

Sections: ``run``, ``model`` (:class:`models.config.ModelConfig`), ``data``, ``train``, ``parallel``,
``kernels`` and ``deepspeed`` (raw additions merged into the generated DeepSpeed config). Dictionaries are turned
into these dataclasses by ``models.config.from_dict``, which checks types and rejects unknown keys naming the
nearest valid one; :func:`validate` then checks the rules that tie fields together. Rules that need the world
size or the shard manifest live with the code that knows them (``pretrain.schedule``, :func:`check_data`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.config import ModelConfig, from_dict
from parallel.sequence import check_sequence_parallel
from parallel.tensor import check_tensor_parallel

PRECISIONS = ("fp32", "bf16")
KERNEL_IMPLS = ("auto", "triton", "torch")
BACKENDS = ("auto", "gloo", "nccl")
# DeepSpeed keys the app owns: the warm-up changes them between stages.
OWNED_DEEPSPEED_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


@dataclass
class RunConfig:
    """Where the run lives (``<out_dir>/<name>/``) and its seed."""

    name: str = "default"
    out_dir: str = "runs"
    seed: int = 0


@dataclass
class DataConfig:
    """The shard directory written by ``python -m data_prep shards`` and stream options."""

    path: str = ""
    train_split: str = "train"
    valid_split: str = "valid"
    num_workers: int = 0
    rc_prob: float = 0.0
    soft_mask_weight: float = 1.0


@dataclass
class StageConfig:
    """A sequence-length warm-up stage: ``seq_len`` for ``tokens`` tokens or ``epochs`` passes over train."""

    seq_len: int = 0
    tokens: float | None = None  # a float so that 1e9 reads naturally
    epochs: float | None = None


@dataclass
class TrainConfig:
    """Optimisation, the warm-up stages, and how often to log / evaluate / checkpoint."""

    seq_len: int = 1024
    tokens_per_step: int = 262144
    micro_batch_tokens: int = 65536
    warmup_stages: list[StageConfig] = field(default_factory=list)
    max_steps: int = 1000
    lr: float = 6e-4
    min_lr: float = 0.0
    lr_schedule: str = "cosine"
    lr_decay_steps: int | None = None  # length of the schedule; default max_steps (run part of a longer one)
    lr_warmup_steps: int | None = None
    lr_warmup_fraction: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    precision: str = "fp32"
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int | None = 16
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    max_nonfinite_steps: int = 10
    peak_flops: float | None = None
    # Start a new run from these weights (a run dir, its checkpoints/ or a step dir, or a from_pretrained export):
    # weights only, step 0, a new optimizer and data order. Ignored once the run has a checkpoint of its own.
    init_from: str | None = None

    def seq_lens(self) -> list[int]:
        """Every window length of the run, warm-up stages first."""
        return [s.seq_len for s in self.warmup_stages] + [self.seq_len]

    def schedule_steps(self) -> int:
        """Optimizer steps over which the LR schedule runs (``lr_decay_steps``, else ``max_steps``)."""
        return self.lr_decay_steps if self.lr_decay_steps is not None else self.max_steps

    def warmup_steps(self) -> int:
        if self.lr_warmup_steps is not None:
            return self.lr_warmup_steps
        return max(1, round(self.lr_warmup_fraction * self.schedule_steps()))


@dataclass
class ParallelConfig:
    """Sequence- and tensor-parallel degrees (data parallelism takes the other ranks), ZeRO stage, comm backend."""

    sequence: int = 1
    tensor: int = 1
    zero_stage: int = 0
    backend: str = "auto"


@dataclass
class KernelsConfig:
    """Default implementation of each kernel (``auto``: Triton on CUDA, the torch reference elsewhere)."""

    fftconv: str = "auto"
    scan: str = "auto"


@dataclass
class Config:
    """A whole training run."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    kernels: KernelsConfig = field(default_factory=KernelsConfig)
    deepspeed: dict[str, Any] = field(default_factory=dict)


def build_config(data: dict) -> Config:
    """A checked :class:`Config` from a (merged) dictionary: types, unknown keys, then :func:`validate`."""
    cfg = from_dict(Config, data)
    cfg.model.validate()
    validate(cfg)
    return cfg


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _one_of(value: Any, allowed: tuple, key: str) -> None:
    _require(value in allowed, f"{key} must be one of {list(allowed)}, got {value!r}")


def validate(cfg: Config) -> None:
    """Cross-field rules; each violation raises ``ValueError`` naming the keys and what to change."""
    _validate_run_data(cfg)
    _validate_lengths(cfg)
    _validate_optim(cfg.train)
    _validate_cadence(cfg.train)
    _one_of(cfg.train.precision, PRECISIONS, "train.precision")
    _one_of(cfg.parallel.zero_stage, (0, 1, 2, 3), "parallel.zero_stage")
    _one_of(cfg.parallel.backend, BACKENDS, "parallel.backend")
    _require(cfg.parallel.sequence >= 1, f"parallel.sequence must be >= 1, got {cfg.parallel.sequence}")
    check_sequence_parallel(cfg.model, cfg.parallel.sequence, cfg.train.seq_lens())  # d_model / heads / lengths
    check_tensor_parallel(cfg.model, cfg.parallel.tensor, cfg.parallel.sequence)  # d_model / d_inner / heads
    check_bf16_zero(cfg.train.precision, cfg.parallel.zero_stage)
    _require(cfg.parallel.sequence == 1 or cfg.parallel.zero_stage < 3,
             f"parallel.zero_stage=3 with parallel.sequence={cfg.parallel.sequence} is not supported (DeepSpeed "
             f"partitions ZeRO-3 parameters over data-parallel ranks only): use parallel.zero_stage=1 or 2, which "
             f"partition the optimizer state over all data x sequence-parallel ranks")
    _one_of(cfg.kernels.fftconv, KERNEL_IMPLS, "kernels.fftconv")
    _one_of(cfg.kernels.scan, KERNEL_IMPLS, "kernels.scan")
    for key in OWNED_DEEPSPEED_KEYS:
        _require(key not in cfg.deepspeed,
                 f"deepspeed.{key} is generated from train.tokens_per_step / train.micro_batch_tokens and the warm-up "
                 f"stages; set those instead")


def check_bf16_zero(precision: str, zero_stage: int) -> None:
    """bf16 needs ZeRO >= 1 (pretraining and fine-tuning): DeepSpeed 0.19 has fp32 gradient accumulation for bf16
    only in its ZeRO optimizers."""
    _require(zero_stage > 0 or precision == "fp32",
             f"train.precision=bf16 with parallel.zero_stage=0 is not supported: without ZeRO DeepSpeed accumulates "
             f"the gradients in bf16 (fp32 accumulation exists only with ZeRO), its checkpoints hold no parameter "
             f"shapes for pretrain.export, and with parallel.tensor > 1 its clipping norm leaves out the shards of "
             f"every tensor-parallel rank but the first; use parallel.zero_stage=1 (fp32 gradients and masters, the "
             f"optimizer state partitioned) or train.precision=fp32")


def _validate_run_data(cfg: Config) -> None:
    name = cfg.run.name
    _require(bool(name) and "/" not in name and name not in (".", ".."),
             f"run.name must be a plain directory name (no '/'), got {name!r}")
    _require(bool(cfg.data.path), "data.path is required: the shard directory written by `python -m data_prep shards`")
    _require(cfg.data.num_workers >= 0, f"data.num_workers must be >= 0, got {cfg.data.num_workers}")
    _require(0.0 <= cfg.data.rc_prob <= 1.0, f"data.rc_prob must lie in [0, 1], got {cfg.data.rc_prob}")
    _require(cfg.data.soft_mask_weight >= 0.0, f"data.soft_mask_weight must be >= 0, got {cfg.data.soft_mask_weight}")


def _validate_lengths(cfg: Config) -> None:
    t, sp, l_max = cfg.train, cfg.parallel.sequence, cfg.model.l_max
    lens = t.seq_lens()
    for i, stage in enumerate(t.warmup_stages):
        key = f"train.warmup_stages[{i}]"
        _require((stage.tokens is None) != (stage.epochs is None),
                 f"{key} needs exactly one of tokens / epochs (its duration), got tokens={stage.tokens} "
                 f"epochs={stage.epochs}")
        _require((stage.tokens or 1) > 0 and (stage.epochs or 1) > 0, f"{key}: the duration must be positive")
    _require(all(a < b for a, b in zip(lens, lens[1:])),
             f"window lengths must increase through the warm-up stages up to train.seq_len, got {lens}")
    for seq_len in lens:
        _require(seq_len >= 2, f"window length {seq_len} is too short (at least 2 tokens)")
        _require(seq_len <= l_max,
                 f"window length {seq_len} exceeds model.l_max={l_max}: raise model.l_max or shorten train.seq_len / "
                 f"the warm-up stages")
        _require(seq_len % sp == 0,
                 f"window length {seq_len} is not divisible by parallel.sequence={sp}: each sequence-parallel rank "
                 f"keeps an equal slice")
        _require(t.tokens_per_step % seq_len == 0,
                 f"train.tokens_per_step={t.tokens_per_step} is not a multiple of window length {seq_len}: the tokens "
                 f"per optimizer step are held constant, so every length must divide them")
    _require(t.micro_batch_tokens >= 1, f"train.micro_batch_tokens must be >= 1, got {t.micro_batch_tokens}")


def _validate_optim(t: TrainConfig) -> None:
    _require(t.lr > 0, f"train.lr must be positive, got {t.lr}")
    _require(0 <= t.min_lr <= t.lr, f"train.min_lr must lie in [0, train.lr={t.lr}], got {t.min_lr}")
    _one_of(t.lr_schedule, ("cosine", "constant"), "train.lr_schedule")
    _require(0.0 <= t.lr_warmup_fraction <= 1.0,
             f"train.lr_warmup_fraction must lie in [0, 1], got {t.lr_warmup_fraction}")
    _require(t.lr_decay_steps is None or t.lr_decay_steps >= 1,
             f"train.lr_decay_steps must be >= 1 (or null for train.max_steps), got {t.lr_decay_steps}")
    _require(t.lr_warmup_steps is None or 1 <= t.lr_warmup_steps <= t.schedule_steps(),
             f"train.lr_warmup_steps must lie in [1, {t.schedule_steps()}] (the schedule's length), "
             f"got {t.lr_warmup_steps}")
    _require(len(t.betas) == 2 and all(0.0 <= b < 1.0 for b in t.betas),
             f"train.betas must be two numbers in [0, 1), got {t.betas}")
    _require(t.eps > 0, f"train.eps must be positive, got {t.eps}")
    _require(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _require(t.grad_clip >= 0, f"train.grad_clip must be >= 0 (0 = no clipping), got {t.grad_clip}")
    _require(t.peak_flops is None or t.peak_flops > 0, f"train.peak_flops must be positive, got {t.peak_flops}")


def _validate_cadence(t: TrainConfig) -> None:
    _require(t.max_steps >= 1, f"train.max_steps must be >= 1, got {t.max_steps}")
    _require(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _require(t.eval_every >= 0, f"train.eval_every must be >= 0 (0 = only at the end), got {t.eval_every}")
    _require(t.eval_batches is None or t.eval_batches >= 1,
             f"train.eval_batches must be >= 1, or null for the whole validation split, got {t.eval_batches}")
    _require(t.ckpt_every >= 0, f"train.ckpt_every must be >= 0 (0 = only at the end), got {t.ckpt_every}")
    _require(t.keep_checkpoints >= 1, f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
    _require(t.max_nonfinite_steps >= 0, f"train.max_nonfinite_steps must be >= 0, got {t.max_nonfinite_steps}")


def check_data(cfg: Config, chunk_len: int) -> None:
    """Rules that need the shard manifest: every window plus its shifted target fits in one chunk."""
    for seq_len in cfg.train.seq_lens():
        _require(seq_len <= chunk_len - 1,
                 f"window length {seq_len} does not fit the shards of {cfg.data.path} (chunk_len {chunk_len}; a window "
                 f"needs seq_len + 1 <= chunk_len bases): shorten it or re-run data_prep with a larger --chunk-len")

"""Per-rank memory planner: tensor- x sequence-parallel degree x ZeRO stage x activation checkpointing for a config
and a GPU.

    python -m parallel.plan --config configs/hyenadna_large_1m.yaml --gpus 8 --gpu-mem-gb 80
    python -m parallel.plan --config configs/mamba_dna_1m.yaml --gpus 32 --gpus-per-node 8 --gpu-mem-gb 40 --json
    python -m parallel.plan --config configs/mamba_dna_1m.yaml --gpus 8 --gpu-mem-gb 24 --pick   # prints the SP degree
    python -m parallel.plan --config configs/hyena_1b_1m.yaml --gpus 64 --gpus-per-node 8 --gpu-mem-gb 80 --pick-args

Every estimate is a formula of the model's shapes (no fitted constant), in bytes per rank:

- **parameters / gradients / optimizer** (the ZeRO paper's accounting, P parameters held by the rank, N = dp x sp
  ranks, since ZeRO shards over all the ranks holding the same tensor-parallel shard): bf16 = 2P weights + 2P
  gradients + 12P optimizer (fp32 master, Adam m and v); fp32 = 4P + 4P + 8P. Stage 1 divides the optimizer by N,
  stage 2 also the gradients, stage 3 also the weights. With tensor parallelism (degree tp) P is one TP rank's
  count, :func:`tp_num_parameters`: the parameters ``parallel.apply_tensor_parallel`` splits count 1/tp, the rest
  (embedding / tied head, norms, row-parallel biases, Hyena's filter MLP before its last layer) count whole.
- **tensor parallelism** (parallel/tensor.py) splits the mixer's inner channels (Hyena's x0, x1, v, the long conv
  and its filter; Mamba's d_inner: x, z, conv, scan; attention heads) and the MLP's hidden units: those
  activations and workspaces count 1/tp. It replicates the residual stream, the norms and their outputs (the
  column-parallel layers' input), Mamba's (dt, B, C) and the loss head's logits: those count whole. A TP group
  stays in one node; so does its SP group (tp x sp divides the GPUs of a node). Only the ZeRO stages the
  training app accepts are listed (:func:`zero_refused`: not ZeRO 0 in bf16, not ZeRO 3 with SP).
- **activations**: what each architecture's code keeps for the backward (derived from models/*.py,
  kernels/*/ref.py and parallel/mixers.py; see :func:`_pieces`), at the moment of the backward where the most is
  alive: every checkpointed piece input still waiting (fp32 residual stream), the residual gradient, and the
  recomputed piece with its gradients. Without checkpointing, everything the forward saved.
- **workspace**: the FFT buffers of one channel group (torch reference: 7 spectra of ``SPECTRUM_BUDGET``-bounded
  groups alive in the backward; Triton: the 4 work buffers of a ``WORK_BUDGET`` group) or the scan's per-chunk
  state tensors.

``--reserve-gb`` (default 2) stands for what no formula here covers (CUDA context, NCCL and DeepSpeed buckets,
allocator fragmentation). A setting fits when the sum plus the reserve is at most ``--gpu-mem-gb``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass

from models.config import ModelConfig

GB = 1e9
ZERO_STAGES = (0, 1, 2, 3)
ZERO_PREFERENCE = (1, 2, 0, 3)  # stage 1/2 cost no more traffic than plain data parallelism; 3 gathers weights
TP_DEGREES = (1, 2, 4, 8)


def zero_refused(tp: int, sp: int, zero_stage: int, precision: str) -> str | None:
    """Why the training app (pretrain/config.py) refuses ZeRO stage ``zero_stage`` at tensor parallelism ``tp``,
    sequence parallelism ``sp`` and ``precision``, or None if it accepts it."""
    if zero_stage == 0 and precision != "fp32":
        return "bf16 without ZeRO is refused"
    if sp > 1 and zero_stage == 3:
        return "ZeRO 3 with SP is refused"
    return None
SCAN_WS_TENSORS = 7  # (chunk, B, Di, N) tensors alive in a chunk's backward (decay, states, adjoint, ...)
FFT_REF_BWD_SPECTRA = 7  # padded inputs, spectra, products, irfft output of one channel group (profiled)


@dataclass(frozen=True)
class Setting:
    """One row of the plan: per-rank bytes of each part for (tp, sp, zero_stage, checkpoint)."""

    sp: int
    dp: int
    zero_stage: int
    checkpoint: bool
    params: float
    grads: float
    optimizer: float
    activations: float
    workspace: float
    total: float
    fits: bool
    tp: int = 1


def _act_bytes(precision: str) -> int:
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    return 2 if precision == "bf16" else 4


def state_bytes(num_params: int, *, precision: str, zero_stage: int, world: int) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) per rank, ZeRO over ``world`` ranks."""
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {zero_stage}")
    a = _act_bytes(precision)
    opt = 12 if a == 2 else 8
    p, g, o = a * num_params, a * num_params, opt * num_params
    return (p / world if zero_stage >= 3 else p, g / world if zero_stage >= 2 else g, o / world if zero_stage >= 1 else o)


def _spectrum_group(channels: int, batch: int, length: int) -> int:
    from kernels.fftconv.ref import SPECTRUM_BUDGET

    return min(channels, max(1, SPECTRUM_BUDGET // (batch * (length + 1))))


def _fft_workspace(channels: int, batch: int, length: int, impl: str) -> float:
    """Bytes of the FFT long conv's backward buffers for one channel group."""
    if impl == "torch":
        group = _spectrum_group(channels, batch, length)
        return FFT_REF_BWD_SPECTRA * batch * group * (length + 1) * 8  # complex64 spectra of size L+1
    from kernels.fftconv.triton_launch import WORK_BUDGET

    n = 1 << max(0, 2 * length - 1).bit_length()  # FFT size: the power of two >= 2L
    pairs = (batch + 1) // 2
    group = max(1, min(channels, WORK_BUDGET // (2 * pairs * n)))
    return 4 * (2 * group * n) * (2 + 2 * pairs)  # filter spectrum, dk work, u and grad work buffers (fp32)


def _scan_terms(cfg: ModelConfig, batch: int, length: int, impl: str, tp: int = 1) -> tuple[float, float]:
    """(saved chunk-start states, backward workspace) of one selective scan over ``length`` steps, on this
    rank's d_inner / tp channels."""
    di, n = cfg.mamba.expand * cfg.d_model // tp, cfg.mamba.d_state
    if impl == "torch":
        from kernels.scan.ref import CHUNK_STATE_ELEMENTS, MAX_CHUNK, MIN_CHUNK

        chunk = 1 << max(0, (CHUNK_STATE_ELEMENTS // max(1, batch * di * n)).bit_length() - 1)
        chunk = min(MAX_CHUNK, max(MIN_CHUNK, chunk))
        return 4 * batch * di * n * math.ceil(length / chunk), SCAN_WS_TENSORS * 4 * chunk * batch * di * n
    from kernels.scan.triton_launch import CHUNK, SEGMENT

    npow = 1 << max(0, n - 1).bit_length()
    return 4 * batch * di * npow * math.ceil(math.ceil(length / CHUNK) / SEGMENT), 0.0


@dataclass(frozen=True)
class Piece:
    """A checkpointed unit (norm + mixer, or norm + MLP): bytes it saves in the forward and bytes alive at the
    peak of its backward (both excluding its input and the incoming residual gradient), and the part of the
    latter that is kernel workspace."""

    name: str
    saved: float
    backward: float
    workspace: float


def _pieces(cfg: ModelConfig, *, seq_len: int, sp: int, batch: int, a: int, impl: str,
            checkpoint: bool, tp: int = 1) -> list[Piece]:
    """The pieces of one block with their byte counts on one rank of ``sp`` (slice of seq_len/sp positions) and
    of ``tp`` (1/tp of the mixer's inner channels and the MLP's hidden units; the norm outputs stay whole)."""
    d, w = cfg.d_model, cfg.mlp_width // tp
    dl = d // tp  # this TP rank's channels of a d-wide inner tensor (Hyena's x0, x1, v, attention's q, k, v)
    n = batch * seq_len // sp  # positions on this rank
    rms = 2 if cfg.arch != "hyena" else 1  # torch RMSNorm keeps x*rstd and the output; LayerNorm the output
    pieces = []
    if cfg.arch == "hyena":
        h = cfg.hyena
        chans = dl // sp  # the long conv runs on d/(tp sp) channels over the whole window
        k = a * chans * seq_len  # one (d/sp, L) filter-sized tensor (independent of the batch)
        hidden = 3 * (1 + h.num_inner_mlps) * seq_len * h.filter_order * a  # per Linear+Sin: out, freq*x, sin
        # the filter MLP is part of the (recomputed) mixer: its activations and the filter itself are kept; the
        # MLP before its last layer is replicated over TP (hidden is whole), its last layer makes d/tp channels; the
        # decay window is a per-layer cache (counted in activation_bytes), so the window product saves nothing new.
        # With SP, parallel.mixers evaluates the MLP in chunks of FILTER_CHUNK positions and keeps only this
        # rank's (d/sp, L) filter; the backward recomputes one chunk at a time.
        if sp > 1:
            from parallel.mixers import FILTER_CHUNK

            hidden = hidden * min(seq_len, FILTER_CHUNK) // seq_len
        filt = hidden + k
        ws = _fft_workspace(chans, batch, seq_len, impl)
        if sp == 1 and impl == "torch":
            # models.hyena's fused path (_GatedLongConv): norm out 1, in_proj 3, conv out 1, gated 1 kept; the
            # filter MLP is recomputed (only the filter k is kept); its backward recomputes the short conv (3)
            # next to d(short conv) 3, d(gated)·x0 1 and d(x1*v) 1, plus dk and the FFT buffers. With TP the norm
            # output (in_proj's input) is whole, every other unit has this rank's d/tp channels.
            saved = a * n * (d + 5 * dl) + k
            backward = a * n * (d + 13 * dl) + 2 * k + ws
        else:
            # norm out 1, in_proj 3, short conv 3 (x0, x1, v views), x1*v 1, conv out 1, gated 1 (units of a*n*d;
            # all but the norm output d/tp with TP)
            saved = a * n * (d + 9 * dl) + filt
            # fftconv backward: conv out and gated freed; d(x0), d(conv out), d(x1*v) and dk alive, plus buffers
            backward = a * n * (d + 10 * dl) + filt + k + ws
        pieces.append(Piece("hyena mixer", saved, backward, ws))
    elif cfg.arch == "mamba":
        m = cfg.mamba
        di, ns, r = m.expand * d // tp, m.d_state, cfg.dt_rank  # this TP rank's d_inner; (dt, B, C) whole
        starts, ws = _scan_terms(cfg, batch, n // batch, impl, tp)
        # norm 2 (units of a*n*d); in_proj 2Di (x, z), conv Di, x_proj R+2N (dt, B, C), delta Di, y Di
        saved = a * n * (rms * d + 5 * di + r + 2 * ns) + starts
        backward = a * n * (rms * d + 8 * di + r + 4 * ns) + starts + ws  # y freed; dy, du, ddelta, dz, dB, dC
        if sp > 1:
            # parallel.mixers scans the slice once, from zero with D and without the gate, and folds the carried
            # state in afterwards: the fold keeps the scan's output y0 (Di) besides the gated output; its backward
            # (dy, overwritten by dy0, and dz; y0 still kept, y freed) and then the scan's (dy0, dz, du, ddelta;
            # y0 and in_proj's output freed) hold no more than one process's scan backward, and the fold's delta
            # and C gradients go into the scan's buffers
            saved += a * n * di
        pieces.append(Piece("mamba mixer", saved, backward, ws))
    else:
        heads = cfg.transformer.n_head // tp
        # norm 2, qkv 3, rotated q and k 2, attention out 1 (+ fp32 log-sum-exp per head), merged heads 1 (all but
        # the norm's d/tp with TP: this rank's heads)
        saved = a * n * (rms * d + 7 * dl) + 4 * n * heads
        backward = saved + a * n * dl * 4  # d(out), dq, dk, dv (flash-style attention: no L x L buffer)
        pieces.append(Piece("attention", saved, backward, 0.0))
    if w > 0:  # w: this TP rank's hidden units (fc1 column-parallel); the norm output stays whole
        if cfg.arch == "hyena":  # models.layers.Mlp keeps norm out and fc1 out (GELU recomputed in the backward)
            pieces.append(Piece("mlp", a * n * (d + w), a * n * (d + 3 * w), 0.0))
        else:  # SwiGLU: fc1 out (2w), silu(gate), product; backward adds their gradients
            pieces.append(Piece("mlp", a * n * (rms * d + 4 * w), a * n * (rms * d + 6 * w), 0.0))
    return pieces


def activation_bytes(cfg: ModelConfig, *, seq_len: int, sp: int = 1, batch: int = 1, precision: str = "fp32",
                     checkpoint: bool | None = None, impl: str = "torch", tp: int = 1) -> tuple[float, float]:
    """(activations, workspace) bytes per rank for one forward + backward of ``batch`` windows of ``seq_len``.

    ``checkpoint`` defaults to ``cfg.checkpoint_activations``; ``impl`` is the kernels' implementation
    (``"torch"`` reference or ``"triton"``); ``tp`` the tensor-parallel degree (checked as the training app
    checks it). The two numbers add up to the modelled peak.
    """
    if impl not in ("torch", "triton"):
        raise ValueError(f"impl must be 'torch' or 'triton', got {impl!r}")
    if seq_len < 1 or batch < 1 or sp < 1 or seq_len % sp:
        raise ValueError(f"need seq_len >= 1 divisible by sp >= 1 and batch >= 1, got seq_len={seq_len} sp={sp} "
                         f"batch={batch}")
    if tp != 1:
        from parallel.tensor import check_tensor_parallel

        check_tensor_parallel(cfg, tp, sp)
    if checkpoint is None:
        checkpoint = _checkpoint_default(cfg, seq_len, sp, batch, precision, tp)
    a = _act_bytes(precision)
    r = 4 if cfg.residual_in_fp32 else a
    n, d, layers = batch * seq_len // sp, cfg.d_model, cfg.n_layer
    pieces = _pieces(cfg, seq_len=seq_len, sp=sp, batch=batch, a=a, impl=impl, checkpoint=checkpoint, tp=tp)
    norm_in = a * n * d  # what a norm saves of its input: the residual itself, or its half-precision copy
    cast = a * n * d if a != r else 0  # the half-precision copy a recomputed piece makes of its fp32 input
    # replicated over TP: the final norm and the tied head (not vocab-parallel: 16 padded tokens) see all of d
    head = a * n * d * (2 if cfg.arch != "hyena" else 1) + n * cfg.padded_vocab_size * (a + 12)
    moments = []  # (total, workspace) at each candidate peak
    block = sum(norm_in + p.saved for p in pieces)
    for i, p in enumerate(pieces):  # the backward of piece i of the last block
        after = len(pieces) - 1 - i  # pieces of the last block already done (their inputs freed)
        if checkpoint:
            inputs = r * n * d * (layers * len(pieces) - after)
            total = inputs + cast + p.backward + r * n * d  # + the residual gradient
        else:
            before = sum(norm_in + q.saved for q in pieces[:i])
            total = (layers - 1) * block + before + norm_in + p.backward + r * n * d
        moments.append((total, p.workspace))
    stored = r * n * d * (layers * len(pieces) + 1) if checkpoint else layers * block + r * n * d
    moments.append((stored + head, 0.0))
    if cfg.arch == "hyena" and sp == 1:  # each layer caches its decay window (d, l_max) in the parameters' dtype
        moments = [(t + layers * a * (d // tp) * cfg.l_max, w) for t, w in moments]  # d/tp channels with TP
    total, ws = max(moments)
    return total - ws, ws


def _checkpoint_default(cfg: ModelConfig, seq_len: int, sp: int, batch: int, precision: str, tp: int = 1) -> bool:
    """The config's checkpointing: ``checkpoint_activations`` / ``checkpoint`` (True, False or "auto": on when
    the model's own estimate of one window's activations passes ``checkpoint_budget_gb``)."""
    mode = cfg.checkpoint_mode if hasattr(cfg, "checkpoint_mode") else cfg.checkpoint_activations
    if mode == "auto":
        off = sum(activation_bytes(cfg, seq_len=seq_len, sp=sp, batch=batch, precision=precision, checkpoint=False,
                                   tp=tp))
        return off > getattr(cfg, "checkpoint_budget_gb", 8.0) * 2**30
    return bool(mode)


def num_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of the model ``cfg`` builds (built on the meta device: no memory, exact count)."""
    import torch

    import models

    with torch.device("meta"):
        return models.build_model(cfg).num_parameters()


def tp_split_parameters(model) -> set[str]:
    """Names (``named_parameters``) of the parameters :func:`parallel.apply_tensor_parallel` splits in ``model``
    (unsplit, e.g. built on the meta device): the rules of parallel/tensor.py's ``_split_*`` functions."""
    from models.attention import CausalSelfAttention
    from models.hyena import HyenaOperator
    from models.layers import GatedMlp, Mlp
    from models.mamba import Mamba

    rules = {  # column-parallel weight and bias, row-parallel weight (its bias stays whole), per-channel tensors
        HyenaOperator: ["in_proj.weight", "in_proj.bias", "short_filter.weight", "short_filter.bias",
                        "filter_fn.bias", "out_proj.weight"],
        Mamba: ["in_proj.weight", "in_proj.bias", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"],
        CausalSelfAttention: ["qkv.weight", "qkv.bias", "out_proj.weight"],
        Mlp: ["fc1.weight", "fc1.bias", "fc2.weight"],
        GatedMlp: ["fc1.weight", "fc1.bias", "fc2.weight"],
    }
    names = set()
    for prefix, module in model.named_modules():
        local = list(rules.get(type(module), []))
        if isinstance(module, HyenaOperator):  # the filter MLP's last Linear makes the channels: split
            last = len(module.filter_fn.implicit_filter) - 1
            local += [f"filter_fn.implicit_filter.{last}.weight", f"filter_fn.implicit_filter.{last}.bias"]
        names.update(f"{prefix}.{name}" if prefix else name for name in local)
    return names & {name for name, _ in model.named_parameters()}


def tp_num_parameters(cfg: ModelConfig, tp: int = 1) -> int:
    """Parameters held by one rank of a tensor-parallel group of ``tp`` (the model built on the meta device;
    split parameters count 1/tp, replicated ones whole). Raises ``ValueError`` if the model does not split
    ``tp`` ways."""
    import torch

    import models
    from parallel.tensor import check_tensor_parallel

    check_tensor_parallel(cfg, tp)
    with torch.device("meta"):
        model = models.build_model(cfg)
    split = tp_split_parameters(model)
    return sum(p.numel() // tp if name in split else p.numel() for name, p in model.named_parameters())


def tp_degrees(cfg: ModelConfig, gpus: int, gpus_per_node: int) -> tuple[list[int], dict]:
    """Tensor-parallel degrees of :data:`TP_DEGREES` the model and the node shape allow, and ``{tp: reason}``
    for those excluded (a TP group stays in one node: NVLink, two all-reduces of the block's activations per
    block and direction)."""
    from parallel.tensor import check_tensor_parallel

    allowed, excluded = [], {}
    for tp in TP_DEGREES:
        if gpus % tp or gpus_per_node % tp:
            excluded[tp] = f"does not divide {gpus} GPUs in nodes of {gpus_per_node} (a TP group stays in one node)"
            continue
        try:
            check_tensor_parallel(cfg, tp)
        except ValueError as err:
            excluded[tp] = str(err).split(";")[0]
            continue
        allowed.append(tp)
    return allowed, excluded


def sp_degrees(cfg: ModelConfig, seq_lens: list[int], gpus: int, gpus_per_node: int,
               tp: int = 1) -> tuple[list[int], dict]:
    """Sequence-parallel degrees (powers of two) the model, the window lengths and the node shape allow next to
    tensor-parallel degree ``tp``, and ``{sp: reason}`` for the powers of two up to ``gpus_per_node / tp`` that
    are excluded."""
    allowed, excluded = [], {}
    d = cfg.d_model // tp if cfg.arch == "hyena" else cfg.d_model
    heads = cfg.transformer.n_head // tp if cfg.arch == "transformer" else 0
    sp = 1
    while sp * tp <= gpus_per_node:
        why = None
        if gpus % (sp * tp) or gpus_per_node % (sp * tp):
            group = "an SP group stays in one node" if tp == 1 else f"an SP x TP group of {sp * tp} stays in one node"
            why = f"does not divide {gpus} GPUs in nodes of {gpus_per_node} ({group})"
        elif cfg.arch == "hyena" and d % sp:
            what = f"d_model={cfg.d_model}" if tp == 1 else f"d_model / tp = {d}"
            why = f"does not divide {what} (Hyena shards the long conv by channels)"
        elif cfg.arch == "transformer" and heads % sp:
            what = f"n_head={cfg.transformer.n_head}" if tp == 1 else f"n_head / tp = {heads}"
            why = f"does not divide {what} (Ulysses shards heads)"
        else:
            bad = [L for L in seq_lens if L % sp]
            if bad:
                why = f"does not divide window length {bad[0]} (each rank keeps an equal slice)"
        if why:
            excluded[sp] = why
        else:
            allowed.append(sp)
        sp *= 2
    return allowed, excluded


def plan(cfg: ModelConfig, *, stages, gpus: int, gpus_per_node: int, gpu_mem_gb: float,
         precision: str, impl: str = "triton", reserve_gb: float = 2.0, num_params: int | None = None,
         zero_stages: tuple[int, ...] = ZERO_STAGES, tp_degrees_: tuple[int, ...] | None = None) -> dict:
    """Every (tp, sp, ZeRO stage, checkpointing) setting with its per-rank bytes, and the recommended one.

    ``stages``: ``(seq_len, micro_batch)`` of every window length of the run (the peak over them counts), or a
    function of the number of ranks sharing one window, sp x tp, returning them (the micro-batch depends on
    dp = gpus / (sp x tp)). ``zero_stages``: the ZeRO stages to consider (only those the app accepts at each
    (tp, sp), :func:`zero_refused`). ``tp_degrees_``: the TP degrees to consider (default every one of
    :data:`TP_DEGREES` the model and the nodes allow; ``(1,)`` plans without tensor parallelism).
    ``num_params``: the whole model's count (default: counted); one TP rank's is :func:`tp_num_parameters`.
    Returns ``{"settings": [Setting...], "excluded_sp": {sp: reason} (at tp = 1), "excluded_tp": {tp: reason},
    "recommended": Setting | None, "num_params": P, "num_params_per_tp_rank": {tp: P_tp}}``.
    """
    if gpus < 1 or gpus_per_node < 1 or gpus % gpus_per_node and gpus > gpus_per_node:
        raise ValueError(f"--gpus ({gpus}) must be a positive multiple of --gpus-per-node ({gpus_per_node}) "
                         f"(or fewer GPUs than one node has)")
    if not zero_stages or any(z not in ZERO_STAGES for z in zero_stages):
        raise ValueError(f"ZeRO stages must be among {ZERO_STAGES}, got {list(zero_stages)}")
    if gpu_mem_gb <= 0 or reserve_gb < 0:
        raise ValueError(f"--gpu-mem-gb must be > 0 and --reserve-gb >= 0, got {gpu_mem_gb} and {reserve_gb}")
    if tp_degrees_ is not None and (not tp_degrees_ or any(t not in TP_DEGREES for t in tp_degrees_)):
        raise ValueError(f"tensor-parallel degrees must be among {TP_DEGREES}, got {list(tp_degrees_)}")
    stages_of = stages if callable(stages) else (lambda ranks: stages)
    if not stages_of(1):
        raise ValueError("plan needs at least one (seq_len, micro_batch) stage")
    per_node = min(gpus_per_node, gpus)
    lens = [L for L, _ in stages_of(1)]
    P = num_parameters(cfg) if num_params is None else num_params
    tps, excluded_tp = tp_degrees(cfg, gpus, per_node)
    if tp_degrees_ is not None:
        for t in tp_degrees_:
            if t not in tps:
                raise ValueError(f"tensor-parallel degree {t} is not possible here: {excluded_tp[t]}")
        tps = [t for t in tps if t in tp_degrees_]
    settings, excluded_sp, per_rank = [], {}, {}
    for tp in tps:
        P_tp = P if tp == 1 else tp_num_parameters(cfg, tp)
        per_rank[tp] = P_tp
        allowed, excluded = sp_degrees(cfg, lens, gpus, per_node, tp)
        if tp == 1:
            excluded_sp = excluded
        for sp in allowed:
            for ckpt in (False, True):
                act, ws = max(activation_bytes(cfg, seq_len=L, sp=sp, batch=b, precision=precision, checkpoint=ckpt,
                                               impl=impl, tp=tp) for L, b in stages_of(sp * tp))
                for zero in zero_stages:
                    if zero_refused(tp, sp, zero, precision):
                        continue
                    p, g, o = state_bytes(P_tp, precision=precision, zero_stage=zero, world=gpus // tp)
                    total = p + g + o + act + ws
                    settings.append(Setting(sp, gpus // (sp * tp), zero, ckpt, p, g, o, act, ws, total,
                                            total + reserve_gb * GB <= gpu_mem_gb * GB, tp))
    return {"settings": settings, "excluded_sp": excluded_sp, "excluded_tp": excluded_tp,
            "recommended": recommend(settings), "num_params": P, "num_params_per_tp_rank": per_rank}


def recommend(settings: list[Setting]) -> Setting | None:
    """The fewest ranks sharing a window (tp x sp) at which something fits; there, no checkpointing if possible;
    then the smaller TP degree (SP's all-to-alls move 1/sp of a block's activations where TP all-reduces the
    whole residual stream twice per block and direction); then ZeRO 1, 2, 0, 3. Without TP: the smallest SP."""
    fitting = [s for s in settings if s.fits]
    if not fitting:
        return None
    return min(fitting, key=lambda s: (s.tp * s.sp, s.checkpoint, s.tp, ZERO_PREFERENCE.index(s.zero_stage)))


# ---------------------------------------------------------------------------------------------------------
# Command line


def _load(config: str, overrides: list[str]):
    """The training config through the app's own schema (so the plan is of exactly what the app would run).
    Imported here: ``pretrain`` builds on ``parallel``, not the other way round."""
    from pretrain.args import resolve

    return resolve(config, overrides)


def _stages(cfg, seq_len: int | None, dp_of) -> callable:
    from pretrain.schedule import batch_split

    lens = [seq_len] if seq_len else cfg.train.seq_lens()

    def stages(sp: int) -> list[tuple[int, int]]:
        out = []
        for L in lens:
            if cfg.train.tokens_per_step % L:
                raise ValueError(f"train.tokens_per_step={cfg.train.tokens_per_step} is not a multiple of {L}")
            dp = dp_of(sp)
            per_rank_ok = (cfg.train.tokens_per_step // L) % dp == 0
            b = batch_split(tokens_per_step=cfg.train.tokens_per_step, seq_len=L, dp=dp,
                            micro_batch_tokens=cfg.train.micro_batch_tokens)[0] if per_rank_ok else 1
            out.append((L, b))
        return out

    return stages


def _table(result: dict, gpu_mem_gb: float) -> str:
    rows = ["  tp  sp  dp zero ckpt | params  grads    optim  activ  wkspc |  total GB  fits"]
    for s in result["settings"]:
        gb = [x / GB for x in (s.params, s.grads, s.optimizer, s.activations, s.workspace, s.total)]
        rows.append(f"{s.tp:4d} {s.sp:3d} {s.dp:3d} {s.zero_stage:4d} {'on' if s.checkpoint else 'off':>4} | "
                    f"{gb[0]:6.2f} {gb[1]:6.2f} {gb[2]:8.2f} {gb[3]:6.1f} {gb[4]:6.2f} | {gb[5]:9.1f}  "
                    f"{'yes' if s.fits else 'no'}")
    for sp, why in result["excluded_sp"].items():
        rows.append(f"  sp={sp} excluded: {why}")
    for tp, why in result.get("excluded_tp", {}).items():
        rows.append(f"  tp={tp} excluded: {why}")
    rec = result["recommended"]
    if rec is None:
        rows.append(f"nothing fits in {gpu_mem_gb:g} GB: use more GPUs per node (a larger SP or TP degree), a "
                    f"shorter train.seq_len, or GPUs with more memory")
    else:
        rows.append(f"recommended: parallel.tensor={rec.tp} parallel.sequence={rec.sp} "
                    f"parallel.zero_stage={rec.zero_stage} model.checkpoint_activations={str(rec.checkpoint).lower()}  "
                    f"({rec.total / GB:.1f} GB per rank of {gpu_mem_gb:g})")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parallel.plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="training YAML (configs/*.yaml)")
    parser.add_argument("--gpus", type=int, required=True, help="total GPUs (ranks) of the job")
    parser.add_argument("--gpu-mem-gb", type=float, required=True, help="memory of one GPU, GB (1e9 bytes)")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="default: --gpus (one node)")
    parser.add_argument("--seq-len", type=int, default=None, help="plan this window length only (default: every "
                        "length of the config, warm-up stages included)")
    parser.add_argument("--kernels", choices=("torch", "triton"), default="triton",
                        help="kernel implementation whose workspace counts (default triton, as on GPUs)")
    parser.add_argument("--reserve-gb", type=float, default=2.0, help="margin for what is not modelled")
    parser.add_argument("--zero-stage", type=int, action="append", choices=ZERO_STAGES,
                        help="repeatable: consider only these ZeRO stages (default all)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--tp", type=int, action="append", choices=TP_DEGREES,
                        help="repeatable: consider only these tensor-parallel degrees (default all the model and "
                             "the nodes allow; --tp 1: no tensor parallelism)")
    parser.add_argument("--pick", action="store_true",
                        help="print only the recommended SP degree of the plans without tensor parallelism (with "
                             "--tp: of those degrees; a recommendation with TP > 1 needs --pick-args)")
    parser.add_argument("--pick-args", action="store_true",
                        help="print only the recommended 'parallel.tensor=T parallel.sequence=S' (app overrides)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as pretrain/main.py")
    args = parser.parse_args(argv)
    try:
        cfg = _load(args.config, args.overrides)
        per_node = args.gpus_per_node or args.gpus
        if args.seq_len is not None and not 1 <= args.seq_len <= cfg.model.l_max:
            raise ValueError(f"--seq-len {args.seq_len} is outside [1, model.l_max={cfg.model.l_max}]")
        stages_of = _stages(cfg, args.seq_len, lambda ranks: max(1, args.gpus // ranks))  # ranks = sp x tp
        lens = [L for L, _ in stages_of(1)]
        result = plan(cfg.model, stages=stages_of, gpus=args.gpus, gpus_per_node=per_node,
                      gpu_mem_gb=args.gpu_mem_gb, precision=cfg.train.precision, impl=args.kernels,
                      reserve_gb=args.reserve_gb, zero_stages=tuple(args.zero_stage or ZERO_STAGES),
                      tp_degrees_=tuple(args.tp) if args.tp else (1,) if args.pick else None)
    except ValueError as err:
        parser.error(str(err))
    rec = result["recommended"]
    if args.pick or args.pick_args:
        if rec is None:
            print(f"parallel.plan: nothing fits in {args.gpu_mem_gb:g} GB per GPU for {args.config}", file=sys.stderr)
            return 1
        if not args.pick_args and rec.tp != 1:  # an SP degree alone would drop the TP degree it was planned with
            print(f"parallel.plan: the recommendation is parallel.tensor={rec.tp} parallel.sequence={rec.sp}; "
                  f"--pick prints an SP degree only for plans without tensor parallelism: use --pick-args",
                  file=sys.stderr)
            return 2
        print(f"parallel.tensor={rec.tp} parallel.sequence={rec.sp}" if args.pick_args else rec.sp)
        return 0
    if args.json:
        out = {"config": args.config, "gpus": args.gpus, "gpus_per_node": per_node, "gpu_mem_gb": args.gpu_mem_gb,
               "reserve_gb": args.reserve_gb, "precision": cfg.train.precision, "kernels": args.kernels,
               "seq_lens": lens, "num_params": result["num_params"],
               "num_params_per_tp_rank": {str(k): v for k, v in result["num_params_per_tp_rank"].items()},
               "settings": [asdict(s) for s in result["settings"]],
               "excluded_sp": {str(k): v for k, v in result["excluded_sp"].items()},
               "excluded_tp": {str(k): v for k, v in result["excluded_tp"].items()},
               "recommended": asdict(rec) if rec else None}
        print(json.dumps(out, indent=1))
        return 0
    m = cfg.model
    print(f"{args.config}: {m.arch} d_model {m.d_model} x {m.n_layer} layers, {result['num_params']:,} parameters, "
          f"{cfg.train.precision}, windows up to {max(lens):,} tokens; {args.gpus} GPUs "
          f"({per_node} per node) of {args.gpu_mem_gb:g} GB, {args.reserve_gb:g} GB reserved; kernels {args.kernels}")
    print(_table(result, args.gpu_mem_gb))
    return 0


if __name__ == "__main__":
    sys.exit(main())

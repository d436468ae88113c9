"""Tensor parallelism on CPU: per-rank parameter and optimizer bytes, activation peak and bytes communicated, at
TP = 1, 2 x SP = 1, 2 (gloo processes), next to the planner's estimates for the same settings and the 1B configs.

    python bench/tensor_parallel.py                                     # hyena d_model 512, 2 layers, L = 2^14
    python bench/tensor_parallel.py --d-model 256 --log2 12 --tp 2 --sp 1 --json /tmp/tp.json

Each point runs ``tp x sp`` fresh processes (gloo, one torch thread each) that build the model (per-block
activation checkpointing, float32), apply ``parallel.apply_tensor_parallel`` then ``parallel.apply_sequence_parallel``,
take one short warm-up step, then one forward + cross-entropy + backward on their slice of a window of real GRCh38
(chr20 of the repository's sample), then one AdamW step. Per rank it records:

- the parameters it holds (bytes) and AdamW's state after the step (bytes of its non-scalar tensors: m and v),
  next to the planner's (``parallel.plan.tp_num_parameters`` and ``state_bytes``: fp32, no ZeRO, one rank);
- the peak RSS (``ru_maxrss``) minus the RSS after the warm-up: the measured activation peak, next to
  ``parallel.plan.activation_bytes`` (torch kernels, the same tp, sp, L);
- the bytes of every all-reduce it starts over its TP group (megatron's row / column-parallel layers and
  ``parallel.tensor.sum_grad``; counted by wrapping ``torch.distributed.all_reduce``: the payload, not the
  algorithm's traffic), per layer (the step's total / n_layer: embedding, norms and head do not communicate),
  forward and backward (the checkpointed blocks' recomputation runs in the backward), next to
  :func:`tp_bytes_formula`; and the SP collectives' bytes of layer 0 (``parallel.count_bytes``) next to
  ``bench/sequence_parallel.py``'s formula on this rank's d_model / tp channels.

The planner's table rows for ``configs/hyena_1b_1m.yaml`` and ``configs/mamba_1b_1m.yaml`` on 8 nodes x 8 GPUs of
80 GB (TP 1 and 2, SP 1, 2 and 8, ZeRO 1, checkpointing) and its recommendation are stored next to the
measurements (estimates, not measured: no GPU has run them). Results go to ``--json`` (default
bench/results/tensor_parallel.json, rewritten after every point, with the machine's load average).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's directory comes first on sys.path: put the repository root there instead.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(REPO)
HG38 = REPO / "data" / "sample" / "hg38" / "hg38_subset.fa.gz"
CONFIGS_1B = ("configs/hyena_1b_1m.yaml", "configs/mamba_1b_1m.yaml")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB


def _model_cfg(arch: str, d_model: int, n_layer: int, L: int) -> dict:
    return {"arch": arch, "d_model": d_model, "n_layer": n_layer, "l_max": L, "checkpoint_activations": True}


def tp_bytes_formula(model, L: int, sp: int, tp: int, batch: int = 1, elem: int = 4) -> dict:
    """Payload bytes of the all-reduces one rank starts over its TP group for one block of ``model`` (split by
    ``apply_tensor_parallel``, so its filter MLP layers are the replicated ones) in a checkpointed forward +
    backward, from parallel/tensor.py's description: forward, each row-parallel layer's (B, L/sp, d) output
    (Hyena / attention / Mamba ``out_proj``, the MLP's ``fc2``; Mamba's ``x_proj`` output, (B, L/sp, R + 2N));
    backward, each column-parallel layer's (B, L/sp, d) input gradient (``in_proj`` / ``qkv``, ``fc1``), Mamba's
    ``x_proj`` output gradient, the replicated parameters' gradients that :func:`parallel.tensor.sum_grad`
    sums (Hyena's filter MLP before its last layer: once per use of each parameter), and the forward's
    all-reduces again (the recomputation of the checkpointed block)."""
    if tp == 1:
        return {"forward": 0, "backward": 0}
    cfg = model.config
    n = batch * L // sp
    act = n * cfg.d_model * elem
    fwd = act * (1 + (cfg.mlp_width > 0))
    bwd = act * (1 + (cfg.mlp_width > 0))
    if cfg.arch == "mamba":
        xdbl = n * (cfg.dt_rank + 2 * cfg.mamba.d_state) * elem
        fwd, bwd = fwd + xdbl, bwd + xdbl
    if cfg.arch == "hyena":
        layers = list(model.layers[0].mixer.filter_fn.implicit_filter)[:-1]
        bwd += sum(p.numel() * elem for layer in layers for p in layer.parameters())  # one all-reduce per use
    return {"forward": fwd, "backward": bwd + fwd}


def run_rank(arch: str, d_model: int, n_layer: int, log2: int, tp: int, sp: int, rank: int, port: int) -> dict:
    """One rank of one point (in this process); returns its measurements."""
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import models
    from bench.sequence_parallel import bytes_formula
    from data_prep.fasta import FastaReader
    from models.config import ModelConfig
    from models.tokenizer import encode
    from parallel import ParallelDims, apply_sequence_parallel, apply_tensor_parallel, count_bytes, shard_sequence
    from parallel.plan import activation_bytes, state_bytes, tp_num_parameters

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=tp * sp)
    dims = ParallelDims(dp=1, sp=sp, tp=tp).build()
    L = 1 << log2
    torch.manual_seed(0)
    model = models.build_model(_model_cfg(arch, d_model, n_layer, L))
    apply_sequence_parallel(apply_tensor_parallel(model, dims), dims)
    seq = FastaReader(HG38).fetch("chr20", 100_000, 100_000 + L + 1)
    ids = torch.from_numpy(encode(seq).astype(np.int64))[None]

    phase, sent_tp = ["forward"], {"forward": 0, "backward": 0}
    calls = {"forward": 0, "backward": 0}
    all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, group=None, **kwargs):
        if group is dims.tp_group and tp > 1:
            sent_tp[phase[0]] += tensor.numel() * tensor.element_size()
            calls[phase[0]] += 1
        return all_reduce(tensor, *args, group=group, **kwargs)

    def step(window: torch.Tensor):
        x, y = shard_sequence(window[:, :-1], dims), shard_sequence(window[:, 1:], dims)
        logits = model(x)
        return F.cross_entropy(logits[0], y[0], reduction="sum") / (window.shape[1] - 1)  # mean over the window

    step(ids[:, : 1024 * sp + 1]).backward()  # one-off initialisation stays out of the measurement
    model.zero_grad(set_to_none=True)
    base = _rss_gb()
    dist.barrier()
    dist.all_reduce = counting_all_reduce
    try:
        with count_bytes() as sent:
            t0 = time.perf_counter()
            loss = step(ids)
            t1 = time.perf_counter()
            phase[0] = "backward"
            loss.backward()
            t2 = time.perf_counter()
    finally:
        dist.all_reduce = all_reduce
    peak = _rss_gb()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt.step()
    optim_bytes = sum(t.numel() * t.element_size() for state in opt.state.values() for t in state.values()
                      if torch.is_tensor(t) and t.dim() > 0)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    total = loss.detach().clone()
    dist.all_reduce(total, group=dims.sp_group)

    cfg = model.config
    p_tp = tp_num_parameters(cfg, tp)
    plan_p, _, plan_o = state_bytes(p_tp, precision="fp32", zero_stage=0, world=1)
    act, ws = activation_bytes(cfg, seq_len=L, sp=sp, tp=tp, batch=1, precision="fp32", checkpoint=True,
                               impl="torch")
    formula = tp_bytes_formula(model, L, sp, tp)
    sp_cfg = ModelConfig(**_model_cfg(arch, d_model // tp, n_layer, L))  # SP splits this rank's d_model / tp
    layer = "layers.0.mixer"
    out = {"arch": arch, "d_model": d_model, "n_layer": n_layer, "L": L, "tp": tp, "sp": sp, "rank": rank,
           "tp_rank": dims.tp_rank, "sp_rank": dims.sp_rank, "loss": round(total.item(), 4),
           "forward_s": round(t1 - t0, 2), "backward_s": round(t2 - t1, 2), "step_s": round(t2 - t0, 2),
           "param_bytes": param_bytes, "planner_param_bytes": int(plan_p),
           "optimizer_bytes": optim_bytes, "planner_optimizer_bytes": int(plan_o),
           "base_rss_gb": round(base, 3), "peak_rss_gb": round(peak, 3), "measured_act_gb": round(peak - base, 3),
           "planner_act_gb": round((act + ws) / 2**30, 3),
           "tp_bytes_per_layer": {k: v // n_layer for k, v in sent_tp.items()},
           "tp_calls_per_layer": {k: v / n_layer for k, v in calls.items()},
           "tp_bytes_per_layer_formula": formula,
           "sp_bytes_layer0": sent.total(tag=layer),
           "sp_bytes_layer0_formula": bytes_formula(sp_cfg, L, sp, dims.sp_rank),
           "torch_threads": torch.get_num_threads()}
    dist.destroy_process_group()
    return out


def run_point(arch: str, d_model: int, n_layer: int, log2: int, tp: int, sp: int) -> list[dict]:
    """Start ``tp * sp`` rank processes for one point; their results, rank order (an ``error`` entry on failure)."""
    from bench.sequence_parallel import launch_ranks

    return launch_ranks(__file__, lambda r, port: (arch, d_model, n_layer, log2, tp, sp, r, port), tp * sp,
                        {"arch": arch, "L": 1 << log2, "tp": tp, "sp": sp})


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (tp, sp): the worst rank's activation peak and its ratio to TP 1 x SP 1, planner errors,
    bytes per layer against the formulas (every rank's)."""
    ok = [r for r in rows if "error" not in r]
    out = []
    one = [r for r in ok if (r["tp"], r["sp"]) == (1, 1)]
    for key in sorted({(r["tp"], r["sp"]) for r in ok}):
        ranks = [r for r in ok if (r["tp"], r["sp"]) == key]
        worst = max(ranks, key=lambda r: r["measured_act_gb"])
        line = {"tp": key[0], "sp": key[1], "step_s": max(r["step_s"] for r in ranks),
                "param_bytes": [r["param_bytes"] for r in ranks],
                "planner_param_bytes": worst["planner_param_bytes"],
                "optimizer_bytes": [r["optimizer_bytes"] for r in ranks],
                "planner_optimizer_bytes": worst["planner_optimizer_bytes"],
                "measured_act_gb": worst["measured_act_gb"], "planner_act_gb": worst["planner_act_gb"],
                "planner_act_error": (round(worst["planner_act_gb"] / worst["measured_act_gb"] - 1, 3)
                                      if worst["measured_act_gb"] > 0 else None),
                "tp_bytes_per_layer": [r["tp_bytes_per_layer"] for r in ranks],
                "tp_bytes_per_layer_formula": worst["tp_bytes_per_layer_formula"],
                "sp_bytes_layer0": [r["sp_bytes_layer0"] for r in ranks],
                "sp_bytes_layer0_formula": [r["sp_bytes_layer0_formula"] for r in ranks]}
        if one and key != (1, 1):
            ref = max(r["measured_act_gb"] for r in one)
            line["act_ratio_vs_tp1_sp1"] = round(worst["measured_act_gb"] / ref, 3) if ref > 0 else None
        out.append(line)
    return out


def planner_1b() -> list[dict]:
    """The planner's rows for the 1B configs on 64 GPUs of 80 GB (ZeRO 1, checkpointing; TP 1, 2 x SP 1, 2, 8)
    and its recommendation (over every setting)."""
    from dataclasses import asdict

    from parallel.plan import _load, _stages, num_parameters, plan

    out = []
    for config in CONFIGS_1B:
        cfg = _load(str(REPO / config), [])
        stages = _stages(cfg, None, lambda ranks: max(1, 64 // ranks))
        result = plan(cfg.model, stages=stages, gpus=64, gpus_per_node=8, gpu_mem_gb=80,
                      precision=cfg.train.precision, impl="triton")
        rows = [{k: (round(v / 1e9, 2) if isinstance(v, float) else v) for k, v in asdict(s).items()}
                for s in result["settings"]
                if s.tp in (1, 2) and s.sp in (1, 2, 8) and s.zero_stage == 1 and s.checkpoint]
        rec = result["recommended"]
        out.append({"config": config, "num_params": num_parameters(cfg.model),
                    "num_params_per_tp_rank": result["num_params_per_tp_rank"],
                    "command": f"python -m parallel.plan --config {config} --gpus 64 --gpus-per-node 8 "
                               f"--gpu-mem-gb 80", "units": "GB (1e9 bytes) per rank",
                    "rows_zero1_ckpt": rows,
                    "recommended": None if rec is None else {"tp": rec.tp, "sp": rec.sp, "zero_stage": rec.zero_stage,
                                                             "checkpoint": rec.checkpoint,
                                                             "total_gb": round(rec.total / 1e9, 1)}})
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("hyena", "mamba"), default="hyena")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--log2", type=int, default=14, help="window length 2^LOG2 (default 14)")
    parser.add_argument("--tp", type=int, action="append", help="repeatable; default 1 and 2")
    parser.add_argument("--sp", type=int, action="append", help="repeatable; default 1 and 2")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "tensor_parallel.json")
    parser.add_argument("--rank", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank:
        arch, *nums = args.rank
        print(json.dumps(run_rank(arch, *map(int, nums))))
        return 0
    command = " ".join(["python bench/tensor_parallel.py", *(sys.argv[1:] if argv is None else argv)])
    points = [(tp, sp) for tp in sorted(args.tp or [1, 2]) for sp in sorted(args.sp or [1, 2])]
    rows: list[dict] = []
    load = os.getloadavg()[0]  # 1-minute load average of the machine (other work shares the cores)
    planned = planner_1b()

    def save(done: bool) -> None:  # after every point, so an interrupted run keeps what it measured
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": command, "complete": done, "load_avg_at_start": load,
            "load_avg_at_last_save": os.getloadavg()[0],
            "model": {**_model_cfg(args.arch, args.d_model, args.n_layer, 1 << args.log2), "precision": "fp32"},
            "summary": summarize(rows), "planner_1b_configs_64x80GB": planned, "ranks": rows}, indent=1) + "\n")

    for tp, sp in points:
        start_load = os.getloadavg()[0]
        got = run_point(args.arch, args.d_model, args.n_layer, args.log2, tp, sp)
        rows.extend({**r, "load_avg_at_start": start_load} for r in got)
        print(json.dumps(got), flush=True)
        save(False)
    save(True)
    print(json.dumps(summarize(rows), indent=1))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

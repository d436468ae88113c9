"""DeepSpeed ZeRO with tensor parallelism: gradients, the clipping norm and checkpoints per TP rank.

On TP 2 x DP 2 gloo processes, the app's own pieces (``apply_tensor_parallel``, ``SequenceDataParallelMPU``,
``build_engine``, ``lm_loss``) run one micro-batch of real hg38 windows through the engine (ZeRO 1 for the three
architectures, ZeRO 2 for mamba too, gradient clipping on): the logits and the loss equal one process within 1e-5.
After the engine's backward (ZeRO's reduction over the two data-parallel ranks that hold the same TP shard), every
parameter's gradient, gathered from the TP shards, equals the single-process gradient of the mean of the
data-parallel groups' losses within 1e-5 relative; the norm DeepSpeed clips with equals the whole model's gradient
norm (squares of the shards summed over TP, replicated parameters counted once); each rank's optimizer holds half
of its TP rank's parameters' state. A checkpoint is written per TP rank, a fresh engine loads it back exactly, and
its per-TP-rank module files join offline into the whole model's weights.
"""

import copy
import math
import os

import pytest
import torch
import torch.distributed as dist
from sp_harness import hg38_windows, rel
from tp_harness import spawn

pytestmark = [pytest.mark.slow, pytest.mark.distributed]
CASES = [("hyena", 1), ("mamba", 1), ("transformer", 1), ("mamba", 2)]


def _cfg(arch: str, zero: int):
    from pretrain.args import resolve

    return resolve(None, ["data.path=unused", f"model.arch={arch}", "model.d_model=16", "model.n_layer=2",
                          "model.l_max=64", "model.transformer.n_head=4", "model.mamba.d_state=4",
                          "train.seq_len=64", "train.tokens_per_step=256", f"parallel.zero_stage={zero}",
                          "train.grad_clip=0.001"])


def _engine(model, cfg, dims, b):
    from parallel import SequenceDataParallelMPU, apply_tensor_parallel
    from pretrain.build import build_engine
    from pretrain.schedule import Stage

    apply_tensor_parallel(model, dims)
    return build_engine(model, cfg, Stage(0, 64, 0, None, micro_batch=b, grad_accum=1), dims.dp,
                        mpu=SequenceDataParallelMPU(dims))


def _engine_checks(payload):
    windows, cases, ckpt_root = payload
    from deepspeed.utils import safe_get_full_grad

    from models import build_model
    from parallel import ParallelDims, gather_tensor_parallel, gather_tensor_parallel_state_dict, \
        merge_tensor_parallel_state_dicts, tensor_parallel_spec, tensor_parallel_specs
    from parallel.sequence import _ensure_deepspeed_comm
    from pretrain.loss import lm_loss

    dims = ParallelDims(dp=2, tp=2).build()
    os.environ.update(RANK=str(dims.rank), LOCAL_RANK=str(dims.rank), WORLD_SIZE=str(dist.get_world_size()))
    _ensure_deepspeed_comm()  # deepspeed.comm on this gloo group, without building its shared-memory op
    ids, labels = windows[:, :-1], windows[:, 1:]
    mask = ((labels >= 7) & (labels <= 10)).float()
    b = ids.shape[0] // dims.dp
    rows = slice(dims.dp_rank * b, (dims.dp_rank + 1) * b)
    out = {}
    for arch, zero in cases:
        cfg = _cfg(arch, zero)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        ref = copy.deepcopy(model)
        ref_logits = ref(ids)
        ref_losses = [lm_loss(ref_logits[d * b:(d + 1) * b], labels[d * b:(d + 1) * b], mask[d * b:(d + 1) * b])
                      for d in range(dims.dp)]
        ref_loss = torch.stack(ref_losses).mean()
        ref_loss.backward()
        ref_norm = math.sqrt(sum(float(q.grad.double().square().sum()) for q in ref.parameters()))

        engine = _engine(model, cfg, dims, b)
        logits = engine(ids[rows])
        loss = lm_loss(logits, labels[rows], mask[rows])
        engine.backward(loss)
        logits_err = rel(logits, ref_logits[rows])
        loss_err = rel(loss, ref_losses[dims.dp_rank])
        worst, where, local_sq = 0.0, None, 0.0
        ref_params = dict(ref.named_parameters())
        for name, p in model.named_parameters():
            grad = safe_get_full_grad(p)
            local_sq += float(grad.double().square().sum())
            e = rel(gather_tensor_parallel(grad.float(), tensor_parallel_spec(p), dims), ref_params[name].grad)
            if e >= worst:
                worst, where = e, name
        engine.step()
        norm = float(engine.get_global_grad_norm())
        held = sum(t.numel() for t in engine.optimizer.single_partition_of_fp32_groups)
        local = sum(p.numel() for p in model.parameters())  # this TP rank's shards + the replicated parameters

        # a checkpoint per TP rank; a fresh engine loads it back
        ckpt = os.path.join(ckpt_root, f"{arch}-{zero}")
        engine.save_checkpoint(ckpt, tag="t")
        saved = gather_tensor_parallel_state_dict(model, dims)
        torch.manual_seed(1)  # other initial weights
        fresh = _engine(build_model(cfg.model), cfg, dims, b)
        fresh.load_checkpoint(ckpt, tag="t")
        loaded = gather_tensor_parallel_state_dict(fresh.module, dims)
        reload_diff = max(float((saved[k] - loaded[k]).abs().max()) for k in saved)
        optim_diff = max(float((x - y).abs().max()) for x, y in zip(engine.optimizer.single_partition_of_fp32_groups,
                                                                   fresh.optimizer.single_partition_of_fp32_groups))
        files, merge_diff = [], 0.0
        if dims.rank == 0:  # offline: join the per-TP-rank module files of the checkpoint
            files = sorted(os.listdir(os.path.join(ckpt, "t")))
            modules = [torch.load(os.path.join(ckpt, "t", f"mp_rank_{t:02d}_model_states.pt"), map_location="cpu",
                                  weights_only=False)["module"] for t in range(dims.tp)]
            merged = merge_tensor_parallel_state_dicts(modules, tensor_parallel_specs(model))
            assert merged.keys() == saved.keys(), sorted(set(merged) ^ set(saved))
            merge_diff = max(float((merged[k] - saved[k]).abs().max()) for k in saved)
        errs = torch.tensor([worst, abs(norm - ref_norm) / ref_norm, reload_diff, optim_diff, merge_diff, logits_err,
                             loss_err], dtype=torch.float64)
        dist.all_reduce(errs, op=dist.ReduceOp.MAX)
        out[arch, zero] = {"grad": errs[0].item(), "param": where, "norm": errs[1].item(), "reload": errs[2].item(),
                           "optim": errs[3].item(), "merge": errs[4].item(), "logits": errs[5].item(),
                           "loss": errs[6].item(), "files": files,
                           "held": held, "local": local,
                           "ref_norm": ref_norm, "local_norm": math.sqrt(local_sq)}
    return out


def test_zero_with_tensor_parallelism_equals_one_process(hg38_subset, tmp_path):
    out = spawn(_engine_checks, world=4, payload=(hg38_windows(hg38_subset, 4, 64), CASES, str(tmp_path / "ckpt")),
                tmp=tmp_path)
    assert set(out) == set(CASES)
    for (arch, zero), r in out.items():
        where = f"{arch} ZeRO-{zero}"
        assert r["logits"] <= 1e-5 and r["loss"] <= 1e-5, (where, r)
        assert r["grad"] <= 1e-5, f"{where}: gradient of {r['param']} differs by {r['grad']:.2e}"
        assert r["norm"] <= 1e-5, f"{where}: clipping norm off by {r['norm']:.2e} (whole model {r['ref_norm']:.4g})"
        # the norm of this rank's shards alone is not it (so the check above can fail)
        assert abs(r["local_norm"] - r["ref_norm"]) / r["ref_norm"] > 1e-3, (where, r)
        assert r["held"] <= r["local"] / 2 + 64, (where, r)  # ZeRO splits this TP rank's parameters over 2 DP ranks
        assert r["reload"] == 0.0 and r["optim"] == 0.0 and r["merge"] == 0.0, (where, r)
        assert {"mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"} <= set(r["files"]), (where, r["files"])

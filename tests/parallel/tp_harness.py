"""Helpers of the tensor-parallel tests: gloo worker processes and the TP (x SP x DP)-vs-one-process check.

``spawn(fn, world, payload, tmp)`` starts ``world`` gloo processes (collectives time out after 90 s, so a mismatch
fails instead of hanging), each calling ``fn(payload)`` once the default group exists, so that one launch can build
several layouts (``ParallelDims(...).build()``) in turn; rank 0's return value comes back to the test.
"""

from __future__ import annotations

import datetime
import os
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sp_harness import free_port, reference_step, rel, split_step, tiny_model


def _entry(rank, world, port, fn, payload, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    try:
        result = fn(payload)
        if rank == 0:
            torch.save(result, Path(out) / "result.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn, world: int, payload, tmp: Path):
    """Run ``fn(payload)`` on ``world`` gloo processes; return rank 0's result."""
    mp.spawn(_entry, args=(world, free_port(), fn, payload, str(tmp)), nprocs=world, join=True)
    return torch.load(Path(tmp) / "result.pt", weights_only=False)


def compare_to_single_process(dims, arch: str, dtype, windows: torch.Tensor, **overrides) -> dict:
    """One forward + backward of ``arch`` split by ``dims`` (TP, then SP) against the same model whole in this
    process, on whole windows.

    ``windows`` (dp * b, L + 1): data-parallel rank d takes rows [d*b, (d+1)*b) and its SP slice of them. The loss is
    the weighted mean over each group's tokens, averaged over data-parallel groups (what training does). Every
    parameter's gradient is gathered over the TP group from the shards, summed over SP and averaged over DP, then
    compared with the single-process one; so are the gathered weights (exactly). Returns the worst relative errors
    over every rank.
    """
    from parallel import (apply_sequence_parallel, apply_tensor_parallel, gather_sequence, gather_tensor_parallel,
                          tensor_parallel_spec)

    model = tiny_model(arch, windows.shape[1] - 1, dtype, **overrides)
    ref, ref_logits, ref_loss = reference_step(model, windows, dims.dp)

    apply_sequence_parallel(apply_tensor_parallel(model, dims), dims)
    rows, logits, loss = split_step(model, windows, dims)

    total = loss.detach().clone()
    dist.all_reduce(total, group=dims.dp_sp_group)  # TP ranks hold the same loss: count it once
    ref_params = dict(ref.named_parameters())
    errors = {"logits": rel(gather_sequence(logits.detach(), dims), ref_logits.detach()[rows]),
              "loss": rel(total / dims.dp, ref_loss.detach()), "grad": 0.0, "weights": 0.0, "worst_param": None,
              "params": 0, "split": 0, "local_numel": 0, "numel": sum(p.numel() for p in ref.parameters())}
    for name, p in model.named_parameters():
        spec = tensor_parallel_spec(p)
        whole = gather_tensor_parallel(p.detach(), spec, dims)
        grad = gather_tensor_parallel(p.grad, spec, dims).clone()
        dist.all_reduce(grad, group=dims.dp_sp_group)
        q = ref_params.pop(name)
        assert whole.shape == q.shape, f"{name}: gathered {tuple(whole.shape)}, whole model {tuple(q.shape)}"
        errors["weights"] = max(errors["weights"], float((whole - q.detach()).abs().max()))
        e = rel(grad / dims.dp, q.grad)
        errors["params"] += 1
        errors["split"] += spec is not None
        errors["local_numel"] += p.numel()
        if e >= errors["grad"]:
            errors["grad"], errors["worst_param"] = e, name
    assert not ref_params, f"parameters missing from the split model: {sorted(ref_params)}"
    worst = torch.tensor([errors["logits"], errors["loss"], errors["grad"], errors["weights"]], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the worst over every rank
    errors["logits"], errors["loss"], errors["grad"], errors["weights"] = worst.tolist()
    return errors

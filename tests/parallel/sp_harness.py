"""Helpers of the sequence-parallel tests: gloo worker processes, real hg38 windows, and the SP-vs-SP=1 check.

``spawn(fn, world, dp, sp, payload, tmp)`` starts ``world`` gloo processes (collectives time out after 90 s, so a
mismatch fails instead of hanging), each calling ``fn(dims, payload)`` with a built :class:`ParallelDims`;
rank 0's return value comes back (through a file) to the test.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, dp, sp, fn, payload, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=90))
    try:
        from parallel import ParallelDims

        result = fn(ParallelDims(dp=dp, sp=sp).build(), payload)
        if rank == 0:
            torch.save(result, Path(out) / "result.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def spawn(fn, dp: int, sp: int, payload, tmp: Path):
    """Run ``fn(dims, payload)`` on ``dp * sp`` gloo processes; return rank 0's result."""
    mp.spawn(_entry, args=(dp * sp, free_port(), dp, sp, fn, payload, str(tmp)), nprocs=dp * sp, join=True)
    return torch.load(Path(tmp) / "result.pt", weights_only=False)


def hg38_windows(fasta: Path, n: int, L: int, chrom: str = "chr20", start: int = 1_500_000) -> torch.Tensor:
    """``n`` consecutive windows of ``L + 1`` real bases (token ids) from ``chrom`` of a plain FASTA."""
    from models.tokenizer import encode

    text = fasta.read_bytes()
    at = text.index(f">{chrom}\n".encode())
    body = text[text.index(b"\n", at) + 1: text.find(b">", at + 1)].replace(b"\n", b"")
    seq = body[start: start + n * L + 1]
    ids = torch.from_numpy(encode(seq))
    return torch.stack([ids[i * L: i * L + L + 1] for i in range(n)])


def tiny_model(arch: str, L: int, dtype=torch.float32, **overrides):
    """A small model of ``arch`` whose mixers split 2 and 4 ways (d_model 16, 4 heads), seeded."""
    from models import build_model

    per_arch = {"hyena": {"filter_order": 16}, "mamba": {"d_state": 4}, "transformer": {"n_head": 4}}
    cfg = {"arch": arch, "d_model": 16, "n_layer": 2, "l_max": L, "d_inner": 0 if arch == "mamba" else 32,
           arch: per_arch[arch]}
    cfg.update(overrides)
    torch.manual_seed(0)
    return build_model(cfg).to(dtype)


def group_losses(logits: torch.Tensor, labels: torch.Tensor):
    """Per-token cross-entropy in the logits' precision (at least fp32) and the loss weights (ACGT targets)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)
    losses = F.cross_entropy(logits.to(dtype).flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
    return losses, ((labels >= 7) & (labels <= 10)).to(dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (normwise relative error of one tensor)."""
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny))


def reference_step(model, windows: torch.Tensor, dp: int):
    """Forward + backward of a deep copy of ``model`` on whole windows (dp * b, L + 1), with the loss training
    computes: the weighted mean over each data-parallel group's tokens, averaged over the groups. Returns
    (the copy, its logits, its loss)."""
    ref = copy.deepcopy(model)
    ids, labels = windows[:, :-1], windows[:, 1:]
    ref_logits = ref(ids)
    losses, weight = group_losses(ref_logits, labels)
    b = ids.shape[0] // dp
    groups = [slice(d * b, (d + 1) * b) for d in range(dp)]
    ref_loss = torch.stack([(losses[g] * weight[g]).sum() / weight[g].sum() for g in groups]).mean()
    ref_loss.backward()
    return ref, ref_logits, ref_loss


def split_step(model, windows: torch.Tensor, dims):
    """Forward + backward of the parallelised ``model`` on this rank's share of ``windows``: data-parallel rank d
    takes rows [d*b, (d+1)*b), its SP slice of them; the loss is this rank's share of its group's token mean.
    Returns (the rows, this rank's logits, its loss)."""
    from parallel import shard_sequence

    ids, labels = windows[:, :-1], windows[:, 1:]
    b = ids.shape[0] // dims.dp
    rows = slice(dims.dp_rank * b, (dims.dp_rank + 1) * b)
    logits = model(shard_sequence(ids[rows], dims))
    losses, weight = group_losses(logits, shard_sequence(labels[rows], dims))
    count = weight.sum().detach()
    dist.all_reduce(count, group=dims.sp_group)
    loss = (losses * weight).sum() / count  # this rank's share of its group's mean
    loss.backward()
    return rows, logits, loss


def compare_to_single_process(dims, arch: str, dtype, windows: torch.Tensor, **overrides) -> dict:
    """One forward + backward of ``arch`` with ``dims`` against the same model in this process on whole windows.

    ``windows`` (dp * b, L + 1): data-parallel rank d takes rows [d*b, (d+1)*b) and its SP slice of them. The loss
    is the weighted mean over each group's tokens, averaged over data-parallel groups (what training does); SP
    gradients are summed over the SP group and averaged over DP. Returns the worst relative errors.
    """
    from parallel import apply_sequence_parallel, gather_sequence

    model = tiny_model(arch, windows.shape[1] - 1, dtype, **overrides)
    ref, ref_logits, ref_loss = reference_step(model, windows, dims.dp)

    apply_sequence_parallel(model, dims)
    rows, logits, loss = split_step(model, windows, dims)

    total = loss.detach().clone()
    dist.all_reduce(total)
    errors = {"logits": rel(gather_sequence(logits.detach(), dims), ref_logits.detach()[rows]),
              "loss": rel(total / dims.dp, ref_loss.detach()), "grad": 0.0, "worst_param": None, "params": 0}
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        grad = p.grad.clone()
        dist.all_reduce(grad)
        e = rel(grad / dims.dp, q.grad)
        errors["params"] += 1
        if e >= errors["grad"]:
            errors["grad"], errors["worst_param"] = e, name
    worst = torch.tensor([errors["logits"], errors["loss"], errors["grad"]], dtype=torch.float64)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the worst over every rank's slice
    errors["logits"], errors["loss"], errors["grad"] = worst.tolist()
    return errors

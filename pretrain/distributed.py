"""Process-group start-up for every way the app is launched.

- ``deepspeed`` / ``torchrun`` launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR/PORT``.
- ``srun`` (one task per device, as in ``slurm/``): the ranks come from ``SLURM_PROCID`` / ``SLURM_NTASKS`` /
  ``SLURM_LOCALID``; the batch script exports ``MASTER_ADDR`` / ``MASTER_PORT``.
- plain ``python pretrain/main.py``: one process; DeepSpeed still wants the variables (else it tries MPI), so
  they are filled in with a free local port.

The backend is NCCL on CUDA and gloo on CPU. On gloo DeepSpeed's shared-memory comm op is not built (its JIT
compile costs about a minute per machine and gloo does not use it).
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import warnings

import torch

_SLURM_TO_TORCH = {"SLURM_PROCID": "RANK", "SLURM_NTASKS": "WORLD_SIZE", "SLURM_LOCALID": "LOCAL_RANK"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill_launch_env(env: dict | None = None) -> dict:
    """Complete the rendezvous variables in ``env`` (``os.environ`` by default) and return it."""
    env = os.environ if env is None else env
    if "RANK" not in env and "SLURM_PROCID" in env and "MASTER_ADDR" in env:
        for slurm_key, key in _SLURM_TO_TORCH.items():
            env[key] = env[slurm_key]
        if "SLURM_NTASKS_PER_NODE" in env:  # e.g. "8" or "8(x2)"
            env.setdefault("LOCAL_WORLD_SIZE", env["SLURM_NTASKS_PER_NODE"].split("(")[0])
    if "RANK" not in env:
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.setdefault("LOCAL_RANK", "0")
    if int(env["WORLD_SIZE"]) == 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        env.setdefault("MASTER_PORT", str(_free_port()))
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
    if missing:
        raise ValueError(f"{', '.join(missing)} not set for a {env['WORLD_SIZE']}-process run: start it with "
                         f"deepspeed, torchrun, or export them (see slurm/)")
    return env


def pick_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested == "nccl" and not torch.cuda.is_available():
        raise ValueError("parallel.backend=nccl needs CUDA devices; use gloo (or auto) on CPU")
    return requested


def init_distributed(backend: str = "auto") -> tuple[int, int, torch.device]:
    """Start the default process group once; return ``(rank, world_size, device)``."""
    import deepspeed

    # DeepSpeed's INFO lines (config dumps) drown the training log; warnings still show.
    deepspeed.utils.logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    env = fill_launch_env()
    backend = pick_backend(backend)
    local_rank = int(env["LOCAL_RANK"])
    if backend == "gloo":
        # `import deepspeed.comm.torch` would bind the name `torch`; the module object is what we patch.
        importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        _share_cpu_threads(env)
    if not torch.distributed.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), device


def _share_cpu_threads(env) -> None:
    """Several CPU processes on one machine share its cores instead of each taking all of them."""
    if "OMP_NUM_THREADS" in env:
        return
    local_world = int(env.get("LOCAL_WORLD_SIZE") or env.get("LOCAL_SIZE") or env["WORLD_SIZE"])
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))

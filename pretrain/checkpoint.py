"""Complete, atomic checkpoints with retention and a verified ``latest``.

Layout under ``<run>/checkpoints/``::

    latest                   text file naming the newest complete checkpoint (DeepSpeed's own convention)
    step-00000100/           DeepSpeed's model / optimizer / LR-schedule files, plus
        trainer_state.pt     step, tokens, warm-up stage, data-parallel layout (written by rank 0)
        rank_state/rank-00000.pt   per rank: loader position and python / numpy / torch RNG states
        config.yaml          the resolved run config (export rebuilds the model from it)
        MANIFEST.json        every file with its size and sha256 (written last)

A checkpoint is written as ``.tmp-step-XXXXXXXX``, completed with its manifest, then renamed; ``latest`` is
replaced (write + rename) only after that, and older checkpoints beyond ``keep`` are deleted last. A crash at
any point leaves ``latest`` naming a complete checkpoint. On resume rank 0 verifies the manifest of the
checkpoint ``latest`` names; if a file is missing, truncated or altered it warns and falls back to the newest
older checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rng_state() -> dict[str, Any]:
    """This process's python / numpy / torch (and CUDA) RNG states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path) -> None:
    """Record every file under ``directory`` (size + sha256) in ``MANIFEST.json``, atomically."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = path.relative_to(directory).as_posix()
        files[rel] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    _fsync(tmp)
    tmp.replace(directory / MANIFEST)


def verify(directory: Path) -> str | None:
    """``None`` when every file of the manifest is present and intact, else what is wrong."""
    manifest = directory / MANIFEST
    if not manifest.is_file():
        return f"{directory.name} has no {MANIFEST} (incomplete write)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError) as err:
        return f"{manifest} is unreadable: {err}"
    for rel, meta in files.items():
        path = directory / rel
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != meta["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if _sha256(path) != meta["sha256"]:
            return f"{path} does not match its sha256 in the manifest (corrupted)"
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    """Saves and finds checkpoints under ``root`` for one rank of a run.

    ``barrier`` synchronises all ranks (a no-op in a single process). Saving is collective: every rank calls
    :meth:`save` with the same step.
    """

    def __init__(self, root: str | Path, *, keep: int, rank: int, world_size: int, barrier: Callable[[], None]):
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoints, got {keep}")
        self.root, self.keep, self.barrier = Path(root), keep, barrier
        self.rank, self.world_size = rank, world_size

    # --- saving ---
    def save(self, engine, step: int, *, trainer_state: dict, rank_state: dict, config_yaml: str) -> Path:
        """Write checkpoint ``step`` atomically, point ``latest`` at it and apply retention. Collective."""
        name = step_dir_name(step)
        tmp = self.root / f".tmp-{name}"
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # left by a crash during an earlier save
        self.barrier()
        engine.save_checkpoint(str(self.root), tag=tmp.name, client_state={}, save_latest=False)
        own = tmp / "rank_state" / f"rank-{self.rank:05d}.pt"
        own.parent.mkdir(parents=True, exist_ok=True)
        torch.save(rank_state, own)
        self.barrier()
        if self.rank == 0:
            torch.save(trainer_state, tmp / TRAINER_STATE)
            (tmp / "config.yaml").write_text(config_yaml)
            write_manifest(tmp)
            self._publish(tmp, self.root / name)
            self._retain()
        self.barrier()
        return self.root / name

    def _publish(self, tmp: Path, final: Path) -> None:
        if final.exists():  # the same step saved again (e.g. a stop right after a periodic save)
            old = final.with_name(f".old-{final.name}")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            shutil.rmtree(old)
        tmp.rename(final)
        latest_tmp = self.root / "latest.tmp"
        latest_tmp.write_text(final.name)
        _fsync(latest_tmp)
        latest_tmp.replace(self.root / "latest")
        _fsync(self.root)

    def _retain(self) -> None:
        latest = self._read_latest()
        for path in self.checkpoints()[: -self.keep]:
            if path.name != latest:
                shutil.rmtree(path)

    # --- finding ---
    def checkpoints(self) -> list[Path]:
        """Complete-named checkpoint directories, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))

    def _read_latest(self) -> str | None:
        try:
            return (self.root / "latest").read_text().strip() or None
        except OSError:
            return None

    def find_resumable(self) -> Path | None:
        """The checkpoint to resume from: ``latest`` if it verifies, else the newest older one that does.

        Each rejected checkpoint is logged as a warning with the reason. ``None`` when there is nothing to resume.
        """
        candidates = self.checkpoints()
        latest = self._read_latest()
        if latest is not None and latest not in {p.name for p in candidates}:
            log.warning("checkpoints/latest names %r, which is not a checkpoint here; looking for older ones", latest)
        if latest is not None:
            # Never resume from something newer than `latest`: it was not published.
            names = [p.name for p in candidates]
            if latest in names:
                candidates = candidates[: names.index(latest) + 1]
        for path in reversed(candidates):
            problem = verify(path)
            if problem is None:
                return path
            log.warning("checkpoint %s is damaged (%s); falling back to the previous checkpoint", path.name, problem)
        if candidates:
            log.warning("no intact checkpoint under %s; starting from scratch", self.root)
        return None

    def load(self, engine, path: Path, layout: dict | None = None) -> tuple[dict, dict]:
        """Load ``path`` into ``engine``; return ``(trainer_state, this rank's rank_state)``. Collective.

        The loader positions and ZeRO partitions belong to the process layout that wrote them, so resuming with
        a different number of processes, or (``layout``: ``{"dp", "sp", "tp"}``) another data x sequence x
        tensor-parallel split of them, is refused.
        """
        trainer_state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
        if trainer_state["world_size"] != self.world_size:
            raise ValueError(
                f"{path} was written by {trainer_state['world_size']} processes but this run has {self.world_size}: "
                f"resume with the same number of processes (or export it and start a new run from the weights)"
            )
        saved = {"dp": trainer_state.get("dp"), "sp": trainer_state.get("sp", 1), "tp": trainer_state.get("tp", 1)}
        layout = None if layout is None else {"tp": 1, **layout}
        if layout is not None and saved["dp"] is not None and saved != layout:
            raise ValueError(
                f"{path} was written with {_layout_text(saved)} ranks but this run has "
                f"{_layout_text(layout).replace(' data-parallel', '')}: the "
                f"stream deals windows per data-parallel rank and ZeRO's files follow the split, so the run cannot "
                f"continue exactly. Resume with parallel.sequence={saved['sp']}"
                + (f" parallel.tensor={saved['tp']}" if saved["tp"] != 1 or layout["tp"] != 1 else "")
                + f", or start a new run from its weights with train.init_from={path} (step 0, new optimizer)"
            )
        load_path, _ = engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True,
                                              load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint {path}")
        own = path / "rank_state" / f"rank-{self.rank:05d}.pt"
        return trainer_state, torch.load(own, map_location="cpu", weights_only=False)


def _layout_text(layout: dict) -> str:
    """``2 data-parallel x parallel.sequence=1`` (``x parallel.tensor=T`` when T > 1)."""
    text = f"{layout['dp']} data-parallel x parallel.sequence={layout['sp']}"
    return text + (f" x parallel.tensor={layout['tp']}" if layout.get("tp", 1) != 1 else "")

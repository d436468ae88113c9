"""A SLURM cluster for the tests: the one this machine already answers to, or a local one started for the run.

``find_or_start(state_dir)`` returns a :class:`Cluster` (the environment that points ``sbatch`` & co. at it) or
raises :class:`Unavailable` saying why there is none. A local cluster (``slurm/local/start.sh``: munged, slurmctld
and two simulated nodes, all state under ``state_dir``) is started only where it is wanted and possible: as root,
with ``CI=true`` or ``LONGDNA_LOCAL_SLURM=1``, so that ``make test`` never starts daemons on a user's machine
unasked. :meth:`Cluster.stop` stops exactly what was started (``slurm/local/stop.sh``, by recorded PIDs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START, STOP = REPO / "slurm" / "local" / "start.sh", REPO / "slurm" / "local" / "stop.sh"


class Unavailable(Exception):
    """No SLURM cluster can be used here; the message says why and how to get one."""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Cluster:
    env: dict = field(default_factory=dict)  # the environment for sbatch / scontrol / scancel
    state_dir: Path | None = None  # set when this process started the cluster (and must stop it)

    def stop(self) -> None:
        """Stop the daemons this process started (none for a cluster it found running) and remove their state."""
        if self.state_dir is not None:
            done = subprocess.run(["bash", str(STOP), str(self.state_dir)], capture_output=True, timeout=120)
            if done.returncode == 0:
                shutil.rmtree(self.state_dir, ignore_errors=True)
            self.state_dir = None


def _idle_nodes(env: dict) -> int:
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=env, capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.split()[1] in ("idle", "mixed") for line in out.stdout.splitlines() if len(line.split()) == 2) \
        if out.returncode == 0 else 0


def find_or_start(nodes: int = 2) -> Cluster:
    """A cluster with ``nodes`` usable nodes: the configured one if it answers, else a local one (see module doc).

    A local cluster keeps its state in a fresh ``/tmp/longdna-slurm-*`` directory: munged needs every directory
    above its socket world-searchable, which pytest's private temporary directories are not.
    """
    env = dict(os.environ)
    if shutil.which("sinfo") and _idle_nodes(env) >= nodes:
        return Cluster(env)
    wanted = in_ci() or os.environ.get("LONGDNA_LOCAL_SLURM") == "1"
    if not wanted:
        raise Unavailable(f"no SLURM cluster with {nodes} idle nodes answers sinfo here; as root, "
                          f"LONGDNA_LOCAL_SLURM=1 starts a local one for the run (slurm/local/start.sh)")
    if os.geteuid() != 0:
        raise Unavailable("a local SLURM cluster needs root (slurmd switches to the job owner's uid); run the tests "
                          "as root or point SLURM_CONF at a cluster")
    state_dir = Path(tempfile.mkdtemp(prefix="longdna-slurm-", dir="/tmp"))
    started = subprocess.run(["bash", str(START), str(state_dir)], env=dict(env, NODES=str(nodes)),
                             capture_output=True, text=True, timeout=600)
    cluster = Cluster(dict(env, SLURM_CONF=str(state_dir / "etc" / "slurm.conf")), state_dir)
    if started.returncode != 0:
        cluster.stop()  # whatever came up before the failure
        raise Unavailable(f"slurm/local/start.sh failed: {(started.stderr or started.stdout).strip()[-1500:]}")
    return cluster

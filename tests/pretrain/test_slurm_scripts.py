"""The sbatch scripts in slurm/: syntax and argument checks everywhere; then real jobs on a two-node SLURM cluster
(the ``slurm`` fixture: the configured cluster, or a local one started for the run, see ``slurm_cluster.py``): a
job that gets the time-limit signal, saves, requeues itself and resumes to the same losses as a straight run, and
a sequence-parallel job split across the two nodes. Without a cluster these skip, except under CI=true (fail)."""

import os
import re
import subprocess
import sys
import time

import pytest
import slurm_cluster

from launch_helpers import REPO, free_port, losses, read_metrics, run_ranks, tiny_args

SCRIPTS = [REPO / "slurm" / "pretrain.sh", REPO / "slurm" / "pretrain_1m.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_asks_for_requeue_on_a_signal(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert re.search(r"^#SBATCH --signal=B:USR1@\d+$", text, re.M) and "#SBATCH --requeue" in text


def test_1m_script_picks_its_config_by_model():
    text = SCRIPTS[1].read_text()
    for config in re.findall(r"CONFIG=(configs/\S+\.yaml)", text):
        assert (REPO / config).is_file(), config
    done = subprocess.run(["bash", str(SCRIPTS[1])], cwd=REPO, env=dict(os.environ, MODEL="rnn"),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "MODEL must be hyena, mamba, hyena-1b or mamba-1b, got 'rnn'" in done.stderr


@pytest.mark.parametrize("model,config,nodes", [("hyena-1b", "configs/hyena_1b_1m.yaml", 8),
                                                ("mamba-1b", "configs/mamba_1b_1m.yaml", 8),
                                                ("hyena", "configs/hyenadna_large_1m.yaml", 4)])
def test_1m_script_passes_the_planners_tensor_and_sequence_degrees(model, config, nodes, capsys):
    """DRY_RUN=1 prints the command the job would run: the model's config, then the planner's pick for the
    allocation (default nodes: 8 for the 1B models, 4 otherwise; 8 tasks per node) as parallel.tensor /
    parallel.sequence, then the caller's overrides (which win)."""
    from parallel.plan import main

    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run(["bash", str(SCRIPTS[1]), "train.max_steps=7"], cwd=REPO, capture_output=True, text=True,
                          env=dict(env, MODEL=model, DRY_RUN="1", PYTHON=sys.executable), timeout=120)
    assert done.returncode == 0, done.stderr
    assert main(["--config", config, "--gpus", str(8 * nodes), "--gpus-per-node", "8", "--gpu-mem-gb", "80",
                 "--pick-args", "train.max_steps=7"]) == 0
    pick = capsys.readouterr().out.strip()
    assert re.fullmatch(r"parallel\.tensor=\d parallel\.sequence=\d", pick)
    assert done.stdout.splitlines()[-1] == f"bash slurm/pretrain.sh {config} {pick} train.max_steps=7"
    assert f"{nodes} x 8 GPUs of 80 GB" in done.stdout


def test_generic_script_needs_a_config_file():
    done = subprocess.run(["bash", str(SCRIPTS[0]), "configs/nope.yaml"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and "usage: sbatch [sbatch options] slurm/pretrain.sh CONFIG.yaml" in done.stderr


def test_a_local_cluster_is_started_only_when_asked_and_as_root(monkeypatch):
    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)  # no cluster configured here
    monkeypatch.delenv("LONGDNA_LOCAL_SLURM", raising=False)
    monkeypatch.setenv("CI", "false")
    with pytest.raises(slurm_cluster.Unavailable, match="LONGDNA_LOCAL_SLURM=1 starts a local one"):
        slurm_cluster.find_or_start()
    monkeypatch.setenv("CI", "true")
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.Unavailable, match="needs root"):
        slurm_cluster.find_or_start()


def _job_field(job_id: str, field: str, env: dict) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=env, capture_output=True, text=True).stdout
    match = re.search(rf"\b{field}=(\S+)", out)
    return match.group(1) if match else ""


@pytest.mark.slow
@pytest.mark.distributed
def test_sbatch_job_saves_on_usr1_requeues_and_resumes(slurm, hg38_shards, runs, straight):
    """Two nodes, one task each, SIGUSR1 to the batch script as SLURM sends it before the time limit. The run
    directory is under pytest's tmp: meant for a cluster whose nodes share this machine's filesystem (e.g. the
    simulated nodes of a one-machine cluster)."""
    (runs / "empty.yaml").write_text("")
    args = tiny_args(hg38_shards, runs, "slurm", **{"train.max_steps": 16})
    log = runs / "slurm-job.out"
    env = dict(slurm.env, PYTHON=sys.executable, MASTER_PORT=str(free_port()))
    submit = subprocess.run(["sbatch", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                             "--gpus-per-node=0", "--time=10", "--job-name=longdna-test", f"--output={log}",
                             "slurm/pretrain.sh", str(runs / "empty.yaml"), *args],
                            cwd=REPO, env=env, capture_output=True, text=True)
    assert submit.returncode == 0, submit.stderr
    job = submit.stdout.strip().split(";")[0]
    try:
        metrics, deadline = runs / "slurm" / "metrics.jsonl", time.time() + 240
        while not (metrics.is_file() and metrics.read_text().count("\n") >= 2):
            assert time.time() < deadline, log.read_text()[-3000:] if log.is_file() else "no job output"
            time.sleep(0.05)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], env=env, check=True)
        deadline = time.time() + 300
        while _job_field(job, "JobState", env) != "COMPLETED":
            state = _job_field(job, "JobState", env)
            assert time.time() < deadline and state not in ("FAILED", "CANCELLED", "TIMEOUT"), \
                f"job {job} {state}:\n{log.read_text()[-4000:]}"
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job], env=env, capture_output=True)
    out = log.read_text()
    assert _job_field(job, "Restarts", env) == "1", out[-3000:]
    assert "SIGUSR1 received" in out and "received SIGUSR1: saved step" in out and "requeueing job" in out
    assert re.search(r"resumed from \S+step-(\d+) at step \d+", out), out[-3000:]
    got, ref = losses(runs / "slurm"), losses(straight)
    assert sorted(got) == list(range(1, 17))
    assert {s: got[s] for s in ref} == ref  # the same bits as the uninterrupted run
    assert [r["step"] for r in read_metrics(runs / "slurm")[1]] == [4, 8, 12, 16]


@pytest.mark.slow
@pytest.mark.distributed
def test_sequence_parallel_job_across_two_nodes_logs_the_losses_of_one_process(slurm, hg38_shards, runs):
    """parallel.sequence=2 through slurm/pretrain.sh: one task on each of two nodes splits every window in two
    (the SP group spans the nodes, data parallelism is 1). Its losses are those of one process holding whole
    windows (rel 1e-5: the same windows, the sums reduced in another order)."""
    (runs / "empty.yaml").write_text("")
    log = runs / "slurm-sp2.out"
    env = dict(slurm.env, PYTHON=sys.executable, MASTER_PORT=str(free_port()))
    job = subprocess.run(["sbatch", "--wait", "--parsable", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=1",
                          "--gpus-per-node=0", "--time=10", "--job-name=longdna-sp2", f"--output={log}",
                          "slurm/pretrain.sh", str(runs / "empty.yaml"),
                          *tiny_args(hg38_shards, runs, "sp2", **{"parallel.sequence": 2})],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = log.read_text() if log.is_file() else job.stderr
    assert job.returncode == 0, out[-4000:]
    assert "on 2 node(s), 2 tasks" in out
    run_ranks(tiny_args(hg38_shards, runs, "sp1"), runs / "logs-sp1", nproc=1)
    got, ref = losses(runs / "sp2"), losses(runs / "sp1")
    assert sorted(got) == sorted(ref) == list(range(1, 9))
    assert got == pytest.approx(ref, rel=1e-5)

"""Species classification accuracy against context length, pretrained backbone vs a randomly initialised one.

    .venv/bin/python bench/species_context.py [--work runs/species_context] [--lengths 128,512,2048,8192] ...
    .venv/bin/python bench/species_context.py --backbone runs/hyena_cpu_8k/export ...   # a backbone of your own

The experiment of HyenaDNA §4.4 (and Mamba's great-apes task), CPU-sized, on the real genomes embedded in
``data/sample``:

1. Two species tasks with ``python -m data_prep species``: *five species* (human = the GRCh38 subset, drosophila,
   C. elegans, arabidopsis, E. coli; for every record the last 10 % is test and the 10 % before it valid) and
   *great apes* (human, chimpanzee, orangutan mitochondrial genomes; last 15 % test, 15 % before it valid).
2. The pretrained backbone: ``--backbone DIR`` (a ``from_pretrained`` directory, e.g. the export of
   ``bench/hyena_cpu_8k.yaml``), or else a small HyenaDNA pretrained here on the GRCh38 sample
   (``pretrain/main.py``, next-token loss, windows of ``--pretrain-seq-len``, filters defined up to
   ``l_max = max(lengths)``), exported with ``pretrain.export``.
3. For every task, context length and backbone (``pretrained``, ``random`` with the pretrained one's architecture
   and the same seed), one ``finetune/main.py`` run: full fine-tuning, mean pooling, the same number of tokens per
   optimizer step at every length (``--tokens-per-step``; so longer contexts see fewer windows), then accuracy on a
   fixed number of test windows (``--test-windows``, rounded up to whole micro-batches) with its 95 % Wilson
   interval. The windows are drawn from short held-out stretches (e.g. 2.5 kb per ape genome), so at long
   lengths they overlap and the interval, which assumes independent windows, is optimistic.

Writes ``bench/results/species_context.json`` (every run's test metrics, the settings, the machine load) and
``bench/results/species_context.png`` (test accuracy against context length, log x axis). A length longer than a
task's held-out segments is recorded as skipped with the reason. Everything is cached under ``--work``: rerunning
skips finished steps (delete the folder to start over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from finetune.metrics import wilson

REPO = Path(__file__).resolve().parents[1]
ARCH_KEYS = ("arch", "d_model", "n_layer", "l_max")  # what the random baseline copies from the pretrained backbone
SAMPLE = REPO / "data" / "sample"
PY = sys.executable
NUCLEAR = SAMPLE / "species" / "nuclear"
MITO = SAMPLE / "species" / "mito"
TASKS = {
    "five_species": (0.1, {
        "human": SAMPLE / "hg38" / "hg38_subset.fa.gz",
        "drosophila": NUCLEAR / "drosophila_melanogaster_r6.42_1pct.fa.gz",
        "c_elegans": NUCLEAR / "caenorhabditis_elegans_WS282_1pct.fa.gz",
        "arabidopsis": NUCLEAR / "arabidopsis_thaliana_TAIR10_1pct.fa.gz",
        "e_coli": NUCLEAR / "ecoli_K12_MG1655_NC_000913.3.fna.gz",
    }),
    "great_apes_mito": (0.15, {
        "human": MITO / "human_Homo_sapiens_NC_012920.1.fa.gz",
        "chimpanzee": MITO / "chimp_Pan_troglodytes_NC_001643.1.fa.gz",
        "orangutan": MITO / "orangutan_Pongo_abelii_NC_002083.1.fa.gz",
    }),
}


def _run(cmd: list, log: Path, env: dict | None = None) -> int:
    """Run ``cmd`` with its output in ``log``; return the exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(map(str, cmd)), flush=True)
    with log.open("w") as out:
        return subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                              env={**os.environ, **(env or {})}).returncode


def prepare_tasks(work: Path) -> dict[str, Path]:
    out = {}
    for name, (fraction, genomes) in TASKS.items():
        task = work / name
        if not (task / "task.json").is_file():
            cmd = [PY, "-m", "data_prep", "species", "--out", task, "--holdout-fraction", fraction, "--quiet",
                   "--iupac-to-n"]
            for species, fasta in genomes.items():
                cmd += ["--genome", f"{species}={fasta}"]
            if _run(cmd, work / "logs" / f"prep-{name}.log") != 0:
                raise SystemExit(f"data_prep species failed, see {work / 'logs' / f'prep-{name}.log'}")
        out[name] = task
    return out


def pretrain(work: Path, args) -> Path:
    """The pretrained backbone: ``--backbone``, or a small one pretrained on the GRCh38 sample and exported (cached)."""
    if args.backbone is not None:
        if not (args.backbone / "config.json").is_file():
            raise SystemExit(f"--backbone {args.backbone}: not a from_pretrained directory (no config.json); export a "
                             f"run with python -m pretrain.export RUN --out DIR")
        return args.backbone
    export = work / "pretrained"
    if (export / "model.safetensors").is_file():
        return export
    shards = work / "hg38"
    if not (shards / "shards" / "manifest.json").is_file():
        if _run([PY, "-m", "data_prep", "demo-shards", "--out", shards], work / "logs" / "hg38-shards.log") != 0:
            raise SystemExit("data_prep demo-shards failed")
    overrides = [f"data.path={shards / 'shards'}", f"run.out_dir={work}", "run.name=pretrain",
                 f"model.l_max={max(args.lengths)}", f"model.d_model={args.d_model}", f"model.n_layer={args.n_layer}",
                 f"train.seq_len={args.pretrain_seq_len}", "train.warmup_stages=[]",
                 f"train.tokens_per_step={args.pretrain_seq_len * 8}",
                 f"train.micro_batch_tokens={args.pretrain_seq_len * 8}", f"train.max_steps={args.pretrain_steps}",
                 f"train.lr_decay_steps={args.pretrain_decay_steps or args.pretrain_steps}",
                 "train.eval_every=0", "train.ckpt_every=0", "train.eval_batches=4", "parallel.zero_stage=0"]
    if _run([PY, "pretrain/main.py", "--config", "configs/demo_cpu.yaml", *overrides],
            work / "logs" / "pretrain.log") != 0:
        raise SystemExit(f"pretraining failed, see {work / 'logs' / 'pretrain.log'}")
    if _run([PY, "-m", "pretrain.export", work / "pretrain", "--out", export], work / "logs" / "export.log") != 0:
        raise SystemExit("export failed")
    return export


def finetune(work: Path, task: str, task_dir: Path, length: int, backbone: str, export: Path, args) -> dict:
    """One fine-tuning run; its test metrics (or why it was skipped)."""
    name = f"{task}-L{length}-{backbone}-lr{args.lr:g}-s{args.steps}-t{args.tokens_per_step}"
    run_dir = work / "finetune" / name
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    if args.report_only:
        return {"skipped": "not run (--report-only)"}
    micro_batch = max(1, args.tokens_per_step // length)
    arch = json.loads((export / "config.json").read_text())
    source = (["backbone.source=pretrained", f"backbone.path={export}"] if backbone == "pretrained" else
              ["backbone.source=random", *(f"model.{k}={arch[k]}" for k in ARCH_KEYS)])
    overrides = ["data.format=species", f"data.task_dir={task_dir}", f"data.seq_len={length}", "data.rc_prob=0.5",
                 f"run.out_dir={work / 'finetune'}", f"run.name={name}", f"run.seed={args.seed}", *source,
                 "head.pooling=mean", f"train.micro_batch={micro_batch}", f"train.max_steps={args.steps}",
                 f"train.lr={args.lr}", "train.lr_warmup_fraction=0.1", "train.weight_decay=0.1",
                 f"train.eval_batches={-(-args.test_windows // micro_batch)}", f"train.log_every={args.steps}"]
    log = work / "logs" / f"{name}.log"
    start = time.perf_counter()
    code = _run([PY, "finetune/main.py", *overrides], log)
    if code != 0:
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else ["?"]
        return {"skipped": f"exit {code}: {tail[0][:300]}".replace(f"{REPO}/", "")}  # paths relative to the repo
    result = json.loads((run_dir / "results.json").read_text())
    result["wall_s"] = round(time.perf_counter() - start, 1)
    (run_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def with_interval(result: dict) -> dict:
    """Add ``accuracy_ci95`` (Wilson) to a run's test metrics."""
    test = result.get("test")
    if test:
        test["accuracy_ci95"] = wilson(round(test["accuracy"] * test["examples"]), test["examples"])
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
    for ax, (task, runs) in zip(axes[0], results.items()):
        for backbone, style, shift in (("pretrained", "o-", 0.96), ("random", "s--", 1.04)):
            pts = [(int(L) * shift, r[backbone]["test"]) for L, r in runs.items() if "test" in r.get(backbone, {})]
            if pts:
                xs, tests = zip(*pts)
                acc = [t["accuracy"] for t in tests]
                err = [[a - t["accuracy_ci95"][0] for a, t in zip(acc, tests)],
                       [t["accuracy_ci95"][1] - a for a, t in zip(acc, tests)]]
                ax.errorbar(xs, acc, yerr=err, fmt=style, capsize=3, label=f"{backbone} backbone")
        ax.axhline(1 / len(TASKS[task][1]), color="grey", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (bases)")
        ax.set_ylabel("test accuracy")
        n = sorted({r[b]["test"]["examples"] for r in runs.values() for b in r if "test" in r[b]})
        ax.set_title(f"{task.replace('_', ' ')} (test windows {'/'.join(map(str, n))}; 95 % CI)", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "species_context")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[128, 512, 2048, 8192])
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    p.add_argument("--backbone", type=Path, default=None,
                   help="a from_pretrained directory to fine-tune (default: pretrain one here, flags below)")
    p.add_argument("--backbones", type=lambda s: s.split(","), default=["pretrained", "random"])
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--pretrain-seq-len", type=int, default=1024)
    p.add_argument("--pretrain-steps", type=int, default=120)
    p.add_argument("--pretrain-decay-steps", type=int, default=None,
                   help="length of the pretraining LR schedule (default: --pretrain-steps)")
    p.add_argument("--steps", type=int, default=30, help="fine-tuning optimizer steps per run")
    p.add_argument("--tokens-per-step", type=int, default=8192)
    p.add_argument("--test-windows", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-only", action="store_true",
                   help="write the JSON and PNG from the runs finished under --work; start no new run")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    start, load_before = time.perf_counter(), os.getloadavg()
    tasks = {name: args.work / name for name in TASKS} if args.report_only else prepare_tasks(args.work)
    export = (args.backbone or args.work / "pretrained") if args.report_only else pretrain(args.work, args)
    results = {}
    for task in args.tasks:
        results[task] = {}
        for length in args.lengths:
            results[task][str(length)] = {b: with_interval(finetune(args.work, task, tasks[task], length, b, export,
                                                                    args))
                                          for b in args.backbones}
            print(task, length, {b: r.get("test", {}).get("accuracy", r.get("skipped"))
                                 for b, r in results[task][str(length)].items()}, flush=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("work", "out")}
    settings["backbone_config"] = json.loads((export / "config.json").read_text())
    report = {"command": "python bench/species_context.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "settings": settings, "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                                                "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
              "wall_s": round(time.perf_counter() - start, 1), "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "species_context.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, args.out / "species_context.png")
    print(f"wrote {args.out / 'species_context.json'} and {args.out / 'species_context.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GenomicBenchmarks test accuracy of a pretrained backbone against the same architecture randomly initialised.

    .venv/bin/python bench/genomic_benchmarks.py --backbone runs/hyena_cpu_8k/export [--steps 150] ...

CPU-sized, on the sequences embedded in ``data/sample``: only the published TEST files of
``human_nontata_promoters`` (9,034 x 251 bp) and ``human_enhancers_cohn`` (6,948 x 500 bp) are there, so each is
split here into train / valid / test (``--fractions``, default 80/10/10, within each class, drawn with ``--seed``;
the split files, their sizes and sha256 are recorded). Each task and backbone is one ``finetune/main.py`` run on
``configs/finetune/<task>.yaml`` with the overrides below (sequence files, fp32, ``--steps`` optimizer steps of
``--batch`` sequences, ``--lr``): the ``pretrained`` backbone (``--backbone``, a ``from_pretrained`` directory) and
``random``, its architecture (``arch``, ``d_model``, ``n_layer``, ``l_max``, ``embed_dropout`` from the
backbone's ``config.json``) freshly initialised with the same seed. Test accuracy comes with its 95 % Wilson
interval.

Writes ``bench/results/genomic_benchmarks.json``. Runs are cached under ``--work`` (a finished run is read back,
an interrupted one resumes from its checkpoint); ``--report-only`` writes the JSON from what is finished.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from finetune.metrics import wilson

REPO = Path(__file__).resolve().parents[1]
SEQUENCES = REPO / "data" / "sample" / "genomic_benchmarks" / "sequences"
TASKS = ("human_nontata_promoters", "human_enhancers_cohn")
ARCH_KEYS = ("arch", "d_model", "n_layer", "l_max", "embed_dropout")


def split_task(task: str, work: Path, fractions: list[float], seed: int) -> dict:
    """Write ``work/<task>/{train,valid,test}.tsv`` from the embedded test file; sizes and sha256 per split.

    Within each class the lines are permuted with ``numpy.random.default_rng([seed, class])`` and cut by
    ``fractions``; each split keeps the source file's line order.
    """
    lines = gzip.decompress((SEQUENCES / f"{task}.test.tsv.gz").read_bytes()).decode("ascii").splitlines()
    if lines and lines[0].split("\t") == ["seq", "label"]:
        lines = lines[1:]
    labels = np.array([int(line.rsplit("\t", 1)[1]) for line in lines])
    parts: dict[str, list[int]] = {"train": [], "valid": [], "test": []}
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)[np.random.default_rng([seed, int(c)]).permutation(int((labels == c).sum()))]
        cut = np.round(np.cumsum(fractions)[:-1] / sum(fractions) * len(rows)).astype(int)
        for name, chunk in zip(parts, np.split(rows, cut)):
            parts[name] += chunk.tolist()
    out = work / task
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, rows in parts.items():
        text = "".join(lines[i] + "\n" for i in sorted(rows)).encode("ascii")
        (out / f"{name}.tsv").write_bytes(text)
        info[name] = {"sequences": len(rows), "per_class": np.bincount(labels[rows]).tolist(),
                      "sha256": hashlib.sha256(text).hexdigest()}
    return info


def finetune(task: str, backbone: str, args) -> dict:
    """One fine-tuning run (cached); its results.json plus the wall time."""
    name = f"{task}-{backbone}-lr{args.lr:g}-s{args.steps}-b{args.batch}"
    run_dir = args.work / "runs" / name
    if (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    if args.report_only:
        return {"skipped": "not run (--report-only)"}
    arch = json.loads((args.backbone / "config.json").read_text())
    source = (["backbone.source=pretrained", f"backbone.path={args.backbone}"] if backbone == "pretrained" else
              ["backbone.source=random", "backbone.path=''", *(f"model.{k}={arch[k]}" for k in ARCH_KEYS)])
    split = args.work / task
    cmd = [sys.executable, "finetune/main.py", "--config", f"configs/finetune/{task}.yaml", *source,
           "data.format=tsv", f"data.train={split / 'train.tsv'}", f"data.valid={split / 'valid.tsv'}",
           f"data.test={split / 'test.tsv'}", f"run.out_dir={args.work / 'runs'}", f"run.name={name}",
           f"run.seed={args.seed}", "train.precision=fp32", "train.epochs=null", f"train.max_steps={args.steps}",
           f"train.micro_batch={args.batch}", f"train.lr={args.lr}", f"train.min_lr={args.lr / 10}",
           "train.lr_warmup_fraction=0.05", f"train.log_every={max(1, args.steps // 10)}", "train.eval_every=0",
           f"train.ckpt_every={max(1, args.steps // 3)}", "train.eval_batches=null"]
    log = args.work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(map(str, cmd)), flush=True)
    start = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.run([str(c) for c in cmd], cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        return {"skipped": f"exit {code}, see {log}"}
    result = json.loads((run_dir / "results.json").read_text())
    result["wall_s"] = round(time.perf_counter() - start, 1)
    (run_dir / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", type=Path, default=REPO / "runs" / "hyena_cpu_8k" / "export",
                   help="from_pretrained directory of the pretrained backbone")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "genomic_benchmarks")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "genomic_benchmarks.json")
    p.add_argument("--tasks", type=lambda s: s.split(","), default=list(TASKS))
    p.add_argument("--backbones", type=lambda s: s.split(","), default=["pretrained", "random"])
    p.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.8, 0.1, 0.1])
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=32, help="sequences per optimizer step")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=2222)
    p.add_argument("--report-only", action="store_true", help="write the JSON from finished runs; start none")
    args = p.parse_args(argv)
    if not (args.backbone / "config.json").is_file():
        p.error(f"--backbone {args.backbone}: no config.json (export a run: python -m pretrain.export RUN --out DIR)")
    start, load_before = time.perf_counter(), os.getloadavg()
    report = {}
    for task in args.tasks:
        report[task] = {"split": split_task(task, args.work, args.fractions, args.seed)}
        for backbone in args.backbones:
            result = finetune(task, backbone, args)
            test = result.get("test")
            if test:
                test["accuracy_ci95"] = wilson(round(test["accuracy"] * test["examples"]), test["examples"])
            report[task][backbone] = result
            print(task, backbone, test and {k: round(test[k], 4) for k in ("accuracy", "mcc")} or result, flush=True)
    out = {"command": "python bench/genomic_benchmarks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k not in ("work", "out")},
           "backbone_config": json.loads((args.backbone / "config.json").read_text()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg_before": load_before,
                       "loadavg_after": os.getloadavg()},
           "wall_s": round(time.perf_counter() - start, 1), "results": report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

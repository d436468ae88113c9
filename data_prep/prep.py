"""``python -m data_prep shards``: FASTA (+ BED or chromosome lists) -> shards + ``manifest.json``.

Order of work: index the FASTA, define the splits, plan chunks and shards (all validation happens here,
before anything is written), then write the shards (in parallel over shards), then the manifest, last.
Re-runs are idempotent: a shard already written for the same plan is verified by its sha256 and kept, so a
crashed run continues where it stopped, and a finished folder is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import __version__
from data_prep.fasta import FastaReader, fai_sha256, load_index
from data_prep.format import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, shard_relpath
from data_prep.regions import plan_chunks, plan_shards, read_bed, regions_from_bed, regions_from_chroms
from data_prep.resume import PartialStore, stale_reason
from data_prep.writer import ShardTask, read_chunk, write_shard

DEFAULT_CHUNK_LEN = 2**20 + 1  # a 1M-token window plus its shifted target
DEFAULT_SHARD_SIZE = 2**26  # bases per shard (~64 MB tars)


@dataclass
class PrepConfig:
    """Options of ``data_prep shards`` (see the CLI help for each)."""

    fasta: Path
    out: Path
    bed: Path | None = None
    valid_chroms: list[str] = field(default_factory=list)
    test_chroms: list[str] = field(default_factory=list)
    chroms: list[str] | None = None
    chunk_len: int = DEFAULT_CHUNK_LEN
    min_acgt: float = 0.5
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    clip: bool = False
    iupac_to_n: bool = False
    overwrite: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def check(self) -> None:
        if self.bed is not None and (self.valid_chroms or self.test_chroms):
            raise ValueError("use either --bed or --valid-chroms/--test-chroms, not both")
        if self.chunk_len < 2:
            raise ValueError(f"--chunk-len must be >= 2, got {self.chunk_len}")
        if not 0.0 <= self.min_acgt <= 1.0:
            raise ValueError(f"--min-acgt is a fraction in [0, 1], got {self.min_acgt}")
        if self.shard_size < 1 or self.workers < 1:
            raise ValueError(f"--shard-size and --workers must be >= 1, got {self.shard_size}, {self.workers}")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan(cfg: PrepConfig) -> tuple[dict, list[ShardTask]]:
    """Validate the inputs and plan every shard; returns the manifest head and the shard tasks."""
    cfg.check()
    entries, note = load_index(cfg.fasta)
    sizes = {e.name: e.length for e in entries}
    if cfg.bed is not None:
        intervals = read_bed(cfg.bed)
        regions, report = regions_from_bed(intervals, sizes, chroms=cfg.chroms, clip=cfg.clip)
        split_def = {"mode": "bed", "bed": str(Path(cfg.bed).resolve()),
                     "bed_sha256": hashlib.sha256(Path(cfg.bed).read_bytes()).hexdigest(), "clip": cfg.clip,
                     "clip_report": report}
    else:
        regions = regions_from_chroms(sizes, valid=cfg.valid_chroms, test=cfg.test_chroms, chroms=cfg.chroms)
        split_def = {"mode": "chroms", "valid": list(cfg.valid_chroms), "test": list(cfg.test_chroms)}
    if not regions:
        raise ValueError("no bases selected: the BED / --chroms leave nothing to prepare")
    named = _named_splits(cfg, intervals if cfg.bed is not None else None)
    _check_no_empty_split(named, regions, cfg, sizes, intervals if cfg.bed is not None else None)
    fai_hash = fai_sha256(entries)
    head = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "created_by": f"longdna data_prep {__version__}",
        "command": cfg.command, "index_note": note,
        "source": {"fasta": str(Path(cfg.fasta).resolve()), "size": Path(cfg.fasta).stat().st_size,
                   "fai_sha256": fai_hash, "records": len(entries)},
        "split_definition": split_def, "chroms": cfg.chroms, "chunk_len": cfg.chunk_len,
        "min_acgt": cfg.min_acgt, "shard_size": cfg.shard_size, "iupac_to_n": cfg.iupac_to_n,
        "regions": {s: [[r.chrom, r.start, r.end] for r in rs] for s, rs in regions.items()},
    }
    tasks = []
    needed = {r.chrom for rs in regions.values() for r in rs}
    used_entries = tuple(e for e in entries if e.name in needed)
    for split, chunks in plan_chunks(regions, cfg.chunk_len).items():
        for number, group in enumerate(plan_shards(chunks, cfg.shard_size)):
            relpath = shard_relpath(split, number)
            shard_plan = _sha({"v": FORMAT_VERSION, "fai": fai_hash, "path": relpath, "min_acgt": cfg.min_acgt,
                               "iupac": cfg.iupac_to_n, "chunks": [[c.key, c.chrom, c.start, c.end] for c in group]})
            tasks.append(ShardTask(str(cfg.out), relpath, tuple(group), str(cfg.fasta), used_entries,
                                   cfg.min_acgt, cfg.iupac_to_n, shard_plan))
    _check_splits_keep_a_chunk(tasks, cfg)
    head["plan"] = _sha([head["regions"], cfg.chunk_len, cfg.shard_size] + [t.plan for t in tasks])
    return head, tasks


def _named_splits(cfg: PrepConfig, intervals: list | None) -> list[str]:
    """The splits the command asks for: those of the BED, else train plus --valid-chroms / --test-chroms."""
    if intervals is not None:
        return list(dict.fromkeys(iv.split for iv in intervals))
    return ["train"] + ["valid"] * bool(cfg.valid_chroms) + ["test"] * bool(cfg.test_chroms)


def _check_no_empty_split(named: list[str], regions: dict, cfg: PrepConfig, sizes: dict[str, int],
                          intervals: list | None) -> None:
    """Refuse a requested split that selects no bases, saying why: a manifest with an empty split would only
    fail later (a training run with no validation data, an evaluation over nothing)."""
    for split in named:
        if sum(r.end - r.start for r in regions.get(split, ())) > 0:
            continue
        if intervals is not None:
            why = _why_bed_split_empty([iv for iv in intervals if iv.split == split], cfg, sizes)
        elif split == "train":
            why = ("every chromosome kept is in --valid-chroms / --test-chroms or has no bases; leave at least one "
                   "chromosome with bases to train on")
        else:
            flag = "--valid-chroms" if split == "valid" else "--test-chroms"
            listed = cfg.valid_chroms if split == "valid" else cfg.test_chroms
            why = (f"{flag} {','.join(listed)}: " + ", ".join(f"{c} has {sizes[c]} bases" for c in listed)
                   + f" in {cfg.fasta}; name a chromosome with sequence")
        raise ValueError(f"split {split!r} would be empty: {why}. Nothing was written.")


def _why_bed_split_empty(intervals: list, cfg: PrepConfig, sizes: dict[str, int]) -> str:
    keep = set(cfg.chroms) if cfg.chroms else None
    excluded = sum(keep is not None and iv.chrom not in keep for iv in intervals)
    unknown = sum((keep is None or iv.chrom in keep) and iv.chrom not in sizes for iv in intervals)
    past_end = len(intervals) - excluded - unknown
    parts = [f"{n} {what}" for n, what in ((excluded, "on chromosomes left out by --chroms"),
                                          (unknown, "on chromosomes absent from the FASTA (dropped by --clip)"),
                                          (past_end, "past the chromosome end (dropped by --clip)")) if n]
    return (f"all {len(intervals)} of its BED intervals in {cfg.bed} were dropped ({'; '.join(parts)}); fix the "
            f"BED or the --chroms list")


def _check_splits_keep_a_chunk(tasks: list[ShardTask], cfg: PrepConfig) -> None:
    """Refuse a split whose every chunk --min-acgt would drop (e.g. a chromosome of N only), before writing.

    Reads each split's chunks only until one passes, so a normal split costs one chunk read.
    """
    if cfg.min_acgt == 0:  # every chunk passes
        return
    by_split: dict[str, list] = {}
    for task in tasks:
        by_split.setdefault(task.chunks[0].split, []).extend(task.chunks)
    reader = FastaReader(Path(cfg.fasta), list(tasks[0].entries)) if tasks else None
    for split, chunks in by_split.items():
        if any(_kept(reader, c, cfg) for c in chunks):
            continue
        bases = sum(c.end - c.start for c in chunks)
        raise ValueError(f"split {split!r} would be empty: all {len(chunks)} chunks ({bases:,} bases) have less "
                         f"than --min-acgt {cfg.min_acgt} of A/C/G/T (N-only sequence?). Lower --min-acgt or give "
                         f"the split other regions. Nothing was written.")


def _kept(reader: FastaReader, chunk, cfg: PrepConfig) -> bool:
    bases, n, _ = read_chunk(reader, chunk, cfg.iupac_to_n)
    return len(bases) - n >= cfg.min_acgt * len(bases)  # the rule write_shard applies


def prepare(cfg: PrepConfig, log=print) -> dict:
    """Run the whole preparation; returns the manifest that was written."""
    head, tasks = plan(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    store = PartialStore(out)
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        reason = stale_reason(manifest_path, head)
        if reason and not cfg.overwrite:
            raise ValueError(f"{out} holds shards of a different preparation ({reason}); pass --overwrite to "
                             "replace them, or choose another --out")
        store.adopt_manifest(manifest_path, head["plan"])
    done, todo = store.verified(tasks, log)
    if not todo and manifest_path.exists() and not stale_reason(manifest_path, head):
        log(f"{out}: all {len(tasks)} shards present and verified; manifest is up to date")
        return json.loads(manifest_path.read_text())
    manifest_path.unlink(missing_ok=True)  # shards change below: no manifest may describe them meanwhile
    if cfg.overwrite:
        store.remove_unplanned(tasks, log)
    log(f"preparing {sum(t.bases for t in todo):,} bases in {len(todo)} shards "
        f"({len(done)} kept from an earlier run) from {cfg.fasta} with {cfg.workers} worker(s)")
    t0 = time.perf_counter()
    for record in _run(todo, cfg.workers, cfg.progress):
        store.save(record)
        done[record["path"]] = record
    seconds = time.perf_counter() - t0
    manifest = _assemble(head, tasks, done)
    manifest["prep_seconds"] = round(seconds, 3)
    tmp = manifest_path.with_name(MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(manifest_path)
    store.clear()
    log(f"wrote {manifest_path} ({sum(t.bases for t in todo) / max(seconds, 1e-9) / 1e6:.1f} Mbases/s)")
    return manifest


def _run(tasks: list[ShardTask], workers: int, show: bool):
    """Yield shard records as they finish, with a progress bar counting bases."""
    from tqdm import tqdm

    bar = tqdm(total=sum(t.bases for t in tasks), unit="b", unit_scale=True, disable=not show,
               desc="shards", file=sys.stderr, smoothing=0.1)
    try:
        if workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield write_shard(task, progress=bar.update)
            return
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with ctx.Pool(min(workers, len(tasks))) as pool:
            for record in pool.imap_unordered(write_shard, tasks):
                bar.update(record["bases"] + record["dropped_bases"])
                yield record
    finally:
        bar.close()


def _assemble(head: dict, tasks: list[ShardTask], done: dict) -> dict:
    """The manifest: ``head`` plus per-split shard records and totals (kept + dropped = region bases)."""
    splits = {}
    for split, regions in head["regions"].items():
        shards = [done[t.relpath] for t in tasks if t.relpath.startswith(split + "/")]
        region_bases = sum(e - s for _, s, e in regions)
        totals = {k: sum(sh[k] for sh in shards)
                  for k in ("samples", "bases", "n_bases", "soft_masked_bases", "dropped_bases")}
        totals["dropped_chunks"] = sum(len(sh["dropped"]) for sh in shards)
        if totals["bases"] + totals["dropped_bases"] != region_bases:
            raise AssertionError(f"split {split}: kept + dropped bases != region bases")  # internal invariant
        splits[split] = {"regions": len(regions), "region_bases": region_bases, **totals,
                         "shards": shards}
    manifest = dict(head)
    manifest["splits"] = splits
    return manifest


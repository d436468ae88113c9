"""``python -m data_prep species``: several genomes -> one species-classification task folder.

    python -m data_prep species --genome human=hg38.fa --genome mouse=mm39.fa ... --out DIR \\
        [--valid-chroms human=chr20,mouse=chr19] [--test-chroms human=chr21,mouse=chr18] \\
        [--holdout-fraction 0.1]

Each species gets ``DIR/<species>/``, a shard folder written by :func:`data_prep.prep.prepare` itself, so it
has the format and guarantees of ``data_prep shards`` (DESIGN §3: manifest, checksums, disjoint splits,
resumable, ``data_prep verify``/``inspect`` work on it). ``DIR/task.json`` (written last) maps species names to
label ids (in the order of the ``--genome`` options), names each species' shard folder and split definition, and
records the command line.

Splits per species: ``--valid-chroms`` / ``--test-chroms`` name whole records (every other record is train).
A species named in neither gets ``--holdout-fraction F`` instead: the last ``2F`` of every record is held out,
``[n - 2h, n - h)`` valid and ``[n - h, n)`` test with ``h = floor(F n)`` (for single-record genomes such as
bacteria and mitochondria). Every species must have every split the task has (a classifier evaluated on a split
that lacks a class measures nothing about it).

Everything is checked for every species before anything is written (bad ``--genome`` specs, a species given
twice, unknown or unreadable files, plain gzip, unknown chromosomes, empty splits, and, in an existing ``DIR``,
shards of a different preparation without ``--overwrite``): an error leaves no ``DIR`` and changes none. Bytes
that are not DNA are found while a genome is read, as in ``data_prep shards``: species before it are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from data_prep import __version__
from data_prep.fasta import load_index
from data_prep.format import MANIFEST_NAME
from data_prep.prep import DEFAULT_CHUNK_LEN, DEFAULT_SHARD_SIZE, PrepConfig, plan, prepare
from data_prep.resume import stale_reason

TASK_FORMAT = "longdna-species-task"
TASK_VERSION = 1
TASK_NAME = "task.json"
SPLITS_DIR = "splits"  # holdout BED files written by this command live here, inside DIR
_SPECIES_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def parse_genome_spec(text: str) -> tuple[str, Path]:
    """``"human=path/hg38.fa"`` -> ``("human", Path("path/hg38.fa"))``; a clear error for anything else."""
    name, eq, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not eq or not name or not path:
        raise ValueError(f"--genome {text!r} is malformed: write NAME=FASTA, e.g. --genome human=hg38.fa")
    if not _SPECIES_NAME.match(name):
        raise ValueError(f"--genome {text!r}: species name {name!r} must start with a letter and hold only letters, "
                         "digits or '_' (it names a folder)")
    return name, Path(path)


def parse_chrom_specs(specs: list[str], flag: str) -> dict[str, list[str]]:
    """``["human=chr20,mouse=chr19", "human=chr21"]`` -> ``{"human": ["chr20", "chr21"], "mouse": ["chr19"]}``."""
    out: dict[str, list[str]] = {}
    for spec in specs:
        for item in (x.strip() for x in spec.split(",")):
            if not item:
                continue
            name, eq, chrom = item.partition("=")
            if not eq or not name.strip() or not chrom.strip():
                raise ValueError(f"{flag} item {item!r} is malformed: write SPECIES=CHROM[,SPECIES=CHROM...], "
                                 f"e.g. {flag} human=chr20,mouse=chr19")
            out.setdefault(name.strip(), []).append(chrom.strip())
    return out


@dataclass
class SpeciesConfig:
    """Options of ``data_prep species`` (see the CLI help for each)."""

    genomes: list[tuple[str, Path]]
    out: Path
    valid_chroms: dict[str, list[str]] = field(default_factory=dict)
    test_chroms: dict[str, list[str]] = field(default_factory=dict)
    holdout_fraction: float | None = None
    chunk_len: int = DEFAULT_CHUNK_LEN
    min_acgt: float = 0.5
    shard_size: int = DEFAULT_SHARD_SIZE
    workers: int = 1
    iupac_to_n: bool = False
    overwrite: bool = False
    progress: bool = True
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def check(self) -> None:
        """Cross-option rules that need no file access."""
        if len(self.genomes) < 2:
            raise ValueError(f"a species task needs at least two --genome NAME=FASTA options, got {len(self.genomes)}")
        names = [n for n, _ in self.genomes]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"species given twice: {', '.join(twice)}; give each species one --genome "
                             "(a multi-record FASTA may hold all of its chromosomes)")
        for flag, spec in (("--valid-chroms", self.valid_chroms), ("--test-chroms", self.test_chroms)):
            unknown = sorted(set(spec) - set(names))
            if unknown:
                raise ValueError(f"{flag} names species without a --genome: {', '.join(unknown)} "
                                 f"(species: {', '.join(names)})")
        if self.holdout_fraction is not None and not 0 < self.holdout_fraction < 0.5:
            raise ValueError(f"--holdout-fraction must lie in (0, 0.5): it is held out twice (valid, then test) at "
                             f"the end of every record; got {self.holdout_fraction}")


def _check_readable(name: str, path: Path) -> None:
    if not path.exists():
        raise ValueError(f"--genome {name}={path}: no such file")
    if not path.is_file():
        raise ValueError(f"--genome {name}={path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"--genome {name}={path}: file is not readable (permissions)")


def _holdout_bed(entries, fraction: float) -> str:
    """BED lines: per record ``[0, n-2h)`` train, ``[n-2h, n-h)`` valid, ``[n-h, n)`` test (``h = floor(F n)``)."""
    lines = []
    for e in entries:
        h = int(e.length * fraction)
        n = e.length
        cuts = [("train", 0, n - 2 * h), ("valid", n - 2 * h, n - h), ("test", n - h, n)]
        lines += [f"{e.name}\t{s}\t{t}\t{split}" for split, s, t in cuts if t > s]
    return "\n".join(lines) + "\n"


def _species_prep(cfg: SpeciesConfig, name: str, fasta: Path, bed: Path | None) -> PrepConfig:
    return PrepConfig(fasta=fasta, out=Path(cfg.out) / name, bed=bed,
                      valid_chroms=cfg.valid_chroms.get(name, []), test_chroms=cfg.test_chroms.get(name, []),
                      chunk_len=cfg.chunk_len, min_acgt=cfg.min_acgt, shard_size=cfg.shard_size,
                      workers=cfg.workers, iupac_to_n=cfg.iupac_to_n, overwrite=cfg.overwrite,
                      progress=cfg.progress, command=cfg.command)


def _plan_all(cfg: SpeciesConfig, bed_dir: Path) -> tuple[list[PrepConfig], dict[str, str], dict[str, dict]]:
    """Validate every species (no write into ``cfg.out``); returns the prep configs, the holdout BED texts and
    each species' planned split bases."""
    cfg.check()
    preps, beds, planned = [], {}, {}
    for name, fasta in cfg.genomes:
        _check_readable(name, fasta)
        try:
            entries, _ = load_index(fasta)
            bed = None
            if name not in cfg.valid_chroms and name not in cfg.test_chroms:
                if cfg.holdout_fraction is None:
                    raise ValueError("it has no --valid-chroms / --test-chroms entry and no --holdout-fraction is "
                                     "given, so it would have no held-out data; name its held-out chromosomes or "
                                     "pass --holdout-fraction")
                beds[name] = _holdout_bed(entries, cfg.holdout_fraction)
                bed = bed_dir / f"{name}.bed"
                bed.write_text(beds[name])
            head, _ = plan(_species_prep(cfg, name, fasta, bed))
            earlier = Path(cfg.out) / name / MANIFEST_NAME
            reason = stale_reason(earlier, head) if earlier.is_file() and not cfg.overwrite else None
            if reason:  # found now, not after other species' shards were rewritten
                raise ValueError(f"{earlier.parent} holds shards of a different preparation ({reason}); pass "
                                 "--overwrite to replace them, or choose another --out")
        except ValueError as err:
            raise ValueError(f"species {name!r} ({fasta}): {err}") from None
        preps.append(_species_prep(cfg, name, fasta, bed))
        planned[name] = {s: sum(e - b for _, b, e in rs) for s, rs in head["regions"].items()}
    splits = sorted({s for p in planned.values() for s in p}, key=["train", "valid", "test"].index)
    if splits == ["train"]:
        raise ValueError("no species has a valid or test split: give --valid-chroms / --test-chroms or "
                         "--holdout-fraction")
    for name, p in planned.items():
        missing = [s for s in splits if not p.get(s)]
        if missing:
            raise ValueError(f"species {name!r} has no {' or '.join(missing)} split while others do; every species "
                             f"needs every split of the task (give it --valid-chroms / --test-chroms "
                             f"{name}=CHROM, or drop its chromosome lists and use --holdout-fraction). "
                             "Nothing was written.")
    return preps, beds, planned


def prepare_species(cfg: SpeciesConfig, log=print) -> dict:
    """Validate every species, write their shard folders, then ``task.json``; returns the task manifest.

    Bad input found only while writing (a non-DNA byte deep in a later genome) removes ``cfg.out`` again when
    this run created it, so a refused run leaves nothing; an existing folder is left as it is (resumable).
    """
    with tempfile.TemporaryDirectory(prefix="longdna-species-") as tmp:
        _, beds, planned = _plan_all(cfg, Path(tmp))
    out = Path(cfg.out)
    fresh = not out.exists()
    try:
        return _write_task(cfg, out, beds, planned, log)
    except ValueError:
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _write_task(cfg: SpeciesConfig, out: Path, beds: dict[str, str], planned: dict[str, dict], log) -> dict:
    (out / SPLITS_DIR).mkdir(parents=True, exist_ok=True)
    species = []
    for label, (name, fasta) in enumerate(cfg.genomes):
        bed = None
        if name in beds:
            bed = out / SPLITS_DIR / f"{name}.bed"
            if not bed.is_file() or bed.read_text() != beds[name]:
                bed.write_text(beds[name])
        log(f"species {name} (label {label}): {fasta}")
        manifest = prepare(_species_prep(cfg, name, fasta, bed), log=log)
        species.append({
            "name": name, "label": label, "shards": name, "fasta": str(Path(fasta).resolve()),
            "split_definition": manifest["split_definition"] if bed is None else
            {"mode": "holdout_fraction", "fraction": cfg.holdout_fraction, "bed": f"{SPLITS_DIR}/{name}.bed",
             "bed_sha256": hashlib.sha256(beds[name].encode()).hexdigest()},
            "splits": {s: {"region_bases": v["region_bases"], "bases": v["bases"], "samples": v["samples"]}
                       for s, v in manifest["splits"].items()},
        })
    task = {"format": TASK_FORMAT, "version": TASK_VERSION, "created_by": f"longdna data_prep {__version__}",
            "command": cfg.command, "classes": [n for n, _ in cfg.genomes], "species": species,
            "splits": sorted({s for p in planned.values() for s in p}, key=["train", "valid", "test"].index),
            "chunk_len": cfg.chunk_len}
    path = out / TASK_NAME
    tmp = path.with_name(TASK_NAME + ".tmp")
    tmp.write_text(json.dumps(task, indent=1))
    tmp.replace(path)
    log(f"wrote {path}: {len(species)} species, splits {', '.join(task['splits'])}")
    return task


def load_task(path: Path) -> dict:
    """Load ``DIR/task.json`` (``path`` may be the folder or the file); refuses unknown formats and versions."""
    path = Path(path)
    file = path / TASK_NAME if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"no {TASK_NAME} in {path}: prepare the task first (python -m data_prep species "
                         "--genome NAME=FASTA ... --out DIR), or the preparation did not finish")
    try:
        task = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON ({err}); re-run the preparation") from None
    if not isinstance(task, dict) or task.get("format") != TASK_FORMAT:
        raise ValueError(f"{file} is not a species task manifest (no \"format\": \"{TASK_FORMAT}\")")
    if task.get("version") != TASK_VERSION:
        raise ValueError(f"{file} has task version {task.get('version')!r}; this reader knows version {TASK_VERSION}")
    return task


def species_config_from_args(args, command: list[str]) -> SpeciesConfig:
    """Build the config from parsed CLI arguments (parsing errors become ``ValueError``)."""
    return SpeciesConfig(
        genomes=[parse_genome_spec(g) for g in args.genome], out=args.out,
        valid_chroms=parse_chrom_specs(args.valid_chroms, "--valid-chroms"),
        test_chroms=parse_chrom_specs(args.test_chroms, "--test-chroms"), holdout_fraction=args.holdout_fraction,
        chunk_len=args.chunk_len, min_acgt=args.min_acgt, shard_size=args.shard_size, workers=args.workers,
        iupac_to_n=args.iupac_to_n, overwrite=args.overwrite, progress=not args.quiet, command=command)

"""Command line: ``python -m data_prep {shards,species,inspect,verify,download,demo-shards}`` (also ``longdna-data``).

Every user mistake ends as ``error: <what is wrong and what to do>`` on stderr with exit status 2; a failed
``verify`` lists its problems and exits with status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data_prep.prep import DEFAULT_CHUNK_LEN, DEFAULT_SHARD_SIZE, PrepConfig, prepare

_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


def _size(text: str) -> int:
    """An integer with an optional K/M/G suffix (powers of 2): ``64M`` -> 67108864."""
    t = text.strip().lower()
    num, suffix = (t[:-1], t[-1]) if t[-1:] in _SUFFIX and t[-1:] else (t, "")
    try:
        return int(num) * _SUFFIX[suffix]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048577, 64M, 1G)") from None


def _names(text: str) -> list[str]:
    return [n for n in text.split(",") if n]


def _parser() -> argparse.ArgumentParser:
    prog = "longdna-data" if Path(sys.argv[0]).name == "longdna-data" else "python -m data_prep"
    p = argparse.ArgumentParser(prog=prog, description="longdna data preparation: genome FASTA (+ split BED) -> "
                                "WebDataset shards + manifest; inspect, verify, download")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("shards", help="FASTA (+ BED or chromosome lists) -> shards + manifest.json")
    s.add_argument("--fasta", type=Path, required=True, help="genome FASTA, plain or bgzipped (.fai built if missing)")
    s.add_argument("--out", type=Path, required=True, help="output folder")
    s.add_argument("--bed", type=Path, help="split BED: chrom, start, end, split (e.g. train/valid/test)")
    s.add_argument("--valid-chroms", type=_names, default=[], help="comma-separated validation chromosomes")
    s.add_argument("--test-chroms", type=_names, default=[], help="comma-separated test chromosomes")
    s.add_argument("--chroms", type=_names, help="use only these chromosomes (comma-separated)")
    s.add_argument("--chunk-len", type=_size, default=DEFAULT_CHUNK_LEN,
                   help=f"bases per sample (default {DEFAULT_CHUNK_LEN} = a 1M-token window + its target)")
    s.add_argument("--min-acgt", type=float, default=0.5,
                   help="drop chunks whose A/C/G/T fraction is below this (counted in the manifest; default 0.5)")
    s.add_argument("--shard-size", type=_size, default=DEFAULT_SHARD_SIZE, help="bases per shard (default 64M)")
    s.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel (default 1)")
    s.add_argument("--clip", action="store_true",
                   help="clip BED intervals at chromosome ends and drop unknown chromosomes (counted) instead of failing")
    s.add_argument("--iupac-to-n", action="store_true",
                   help="read IUPAC ambiguity codes (R, Y, K, M, ...) as N instead of failing on them")
    s.add_argument("--overwrite", action="store_true", help="replace shards of a different earlier preparation")
    s.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = sub.add_parser("species", help="several genomes -> a species-classification task (shards per species + "
                        "task.json)")
    sp.add_argument("--genome", action="append", default=[], metavar="NAME=FASTA",
                    help="a species and its genome FASTA (plain or bgzipped); repeat per species, label ids follow "
                    "this order")
    sp.add_argument("--out", type=Path, required=True, help="task folder")
    sp.add_argument("--valid-chroms", action="append", default=[], metavar="SPECIES=CHROM,...",
                    help="validation records per species, e.g. human=chr20,mouse=chr19")
    sp.add_argument("--test-chroms", action="append", default=[], metavar="SPECIES=CHROM,...",
                    help="test records per species, e.g. human=chr21,mouse=chr18")
    sp.add_argument("--holdout-fraction", type=float, default=None, metavar="F",
                    help="for species without chromosome lists: the last F of every record is test and the F "
                    "before it valid (single-record genomes)")
    sp.add_argument("--chunk-len", type=_size, default=DEFAULT_CHUNK_LEN, help="bases per sample")
    sp.add_argument("--min-acgt", type=float, default=0.5, help="drop chunks below this A/C/G/T fraction")
    sp.add_argument("--shard-size", type=_size, default=DEFAULT_SHARD_SIZE, help="bases per shard")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--iupac-to-n", action="store_true", help="read IUPAC ambiguity codes as N")
    sp.add_argument("--overwrite", action="store_true", help="replace shards of a different earlier preparation")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="per split: shards, samples, bases, N / soft-masked fractions, dropped")
    i.add_argument("dir", type=Path)
    i.add_argument("--json", action="store_true", help="print the summary as JSON")

    v = sub.add_parser("verify", help="check shard checksums and contents (with --fasta: every base)")
    v.add_argument("dir", type=Path)
    v.add_argument("--fasta", type=Path, help="compare every sample with this FASTA at its coordinates")

    d = sub.add_parser("download", help="UCSC genome files, checksum-verified, resumable, cached")
    d.add_argument("assembly", help="UCSC assembly name, e.g. hg38, mm39, panTro6, gorGor6, ponAbe3, panPan3, "
                   "susScr11, micMur2")
    d.add_argument("--out", type=Path, required=True, help="cache folder")
    d.add_argument("--chroms", type=_names, help="only these chromosomes (comma-separated), e.g. chr22")
    d.add_argument("--base-url", default=None, help="mirror of UCSC's goldenPath folder")
    d.add_argument("--quiet", action="store_true", help="no progress bar")

    m = sub.add_parser("demo-shards", help="the data step of `make demo` (the embedded GRCh38 sample without --fasta)")
    m.add_argument("--out", type=Path, default=Path("data/demo"))
    m.add_argument("--fasta", type=Path, help="a FASTA path, or 'hg38' to download chr22 from UCSC "
                   "(default: the GRCh38 sample embedded in the repository, data/sample/hg38/hg38_subset.fa.gz)")
    m.add_argument("--bed", type=Path)
    m.add_argument("--cache", type=Path, default=Path("cache"), help="download cache (default ./cache)")
    m.add_argument("--base-url", default=None, help="mirror of UCSC's goldenPath folder")
    m.add_argument("--workers", type=int, default=1)
    m.add_argument("--quiet", action="store_true")
    return p


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "shards":
        prepare(PrepConfig(
            fasta=args.fasta, out=args.out, bed=args.bed, valid_chroms=args.valid_chroms,
            test_chroms=args.test_chroms, chroms=args.chroms, chunk_len=args.chunk_len, min_acgt=args.min_acgt,
            shard_size=args.shard_size, workers=args.workers, clip=args.clip, iupac_to_n=args.iupac_to_n,
            overwrite=args.overwrite, progress=not args.quiet, command=["python", "-m", "data_prep"] + args.argv),
            log=_log)
        return 0
    if args.cmd == "species":
        from data_prep.species import prepare_species, species_config_from_args

        prepare_species(species_config_from_args(args, ["python", "-m", "data_prep"] + args.argv), log=_log)
        return 0
    if args.cmd == "inspect":
        from data_prep.format import load_manifest
        from data_prep.report import format_summary, summary

        manifest = load_manifest(args.dir)
        print(json.dumps(summary(manifest), indent=1) if args.json else format_summary(manifest))
        return 0
    if args.cmd == "verify":
        from data_prep.report import verify

        problems = verify(args.dir, args.fasta, log=_log)
        for p in problems:
            print(f"FAILED: {p}")
        print("verify: " + (f"{len(problems)} problem(s)" if problems else "all shards OK"))
        return 1 if problems else 0
    from data_prep.download import UCSC_BASE_URL

    base = args.base_url or UCSC_BASE_URL
    if args.cmd == "download":
        from data_prep.download import download_genome

        print(download_genome(args.assembly, args.out, args.chroms, base_url=base, progress=not args.quiet, log=_log))
        return 0
    from data_prep.demo import demo_shards

    print(demo_shards(args.out, fasta=args.fasta, bed=args.bed, cache=args.cache, base_url=base,
                      workers=args.workers, progress=not args.quiet, log=_log))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in manifests as the command line
    try:
        return _run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        return 130

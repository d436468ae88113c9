"""Which bases go to which split, and how they are cut into chunks and shards.

Two ways to define splits: a BED file (chrom, start, end, split; the HyenaDNA/Basenji layout) or
chromosome lists (``--valid-chroms`` / ``--test-chroms``; every other chromosome is train). Within a split
intervals are merged, so overlaps never duplicate bases; a base claimed by two splits is an error that lists
the intervals. Intervals past a chromosome end or on an unknown chromosome are an error too, or with
``clip=True`` are clipped / dropped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_MAX_LISTED = 10


@dataclass(frozen=True)
class Interval:
    """One BED interval, 0-based half-open, with the BED line it came from."""

    chrom: str
    start: int
    end: int
    split: str
    line: int = 0

    def __str__(self) -> str:
        where = f" (BED line {self.line})" if self.line else ""
        return f"{self.chrom}:{self.start}-{self.end} {self.split}{where}"


@dataclass
class Region:
    """A merged stretch of one split on one chromosome, with the BED lines merged into it."""

    chrom: str
    start: int
    end: int
    split: str
    lines: list[int] = field(default_factory=list)

    def __str__(self) -> str:
        if not self.lines:
            return f"{self.chrom}:{self.start}-{self.end} ({self.split})"
        shown = ",".join(map(str, self.lines[:3])) + (",..." if len(self.lines) > 3 else "")
        return f"{self.chrom}:{self.start}-{self.end} ({self.split}, BED line {shown})"


@dataclass(frozen=True)
class Chunk:
    """One sample to be written: bases ``[start, end)`` of ``chrom``; ``index`` numbers chunks in a split."""

    split: str
    index: int
    chrom: str
    start: int
    end: int

    @property
    def key(self) -> str:
        return f"{self.split}-{self.index:09d}"


def _listing(items: list, what: str) -> str:
    shown = "\n  ".join(str(x) for x in items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{len(items)} {what}:\n  {shown}{more}"


def check_split_name(name: str) -> str:
    """Split names become folder names and sample-key prefixes: letters, digits and ``_`` only."""
    if not _SPLIT_NAME.match(name):
        raise ValueError(f"split name {name!r} must be letters, digits or '_' (it names folders and sample keys)")
    return name


def read_bed(path: Path) -> list[Interval]:
    """Parse a 4-column BED (chrom, start, end, split); ``#``, ``track`` and ``browser`` lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"BED file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        cols = line.split()
        if not cols or cols[0].startswith("#") or cols[0] in ("track", "browser"):
            continue
        if len(cols) < 4:
            raise ValueError(f"{path}:{lineno}: expected chrom, start, end, split; got {line!r}")
        try:
            start, end = int(cols[1]), int(cols[2])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: start and end must be integers; got {line!r}") from None
        if not 0 <= start < end:
            raise ValueError(f"{path}:{lineno}: need 0 <= start < end; got {line!r}")
        try:
            split = check_split_name(cols[3])
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: {err}") from None
        out.append(Interval(cols[0], start, end, split, lineno))
    if not out:
        raise ValueError(f"BED file {path} holds no intervals")
    return out


def regions_from_bed(intervals: list[Interval], sizes: dict[str, int], *, chroms: list[str] | None = None,
                     clip: bool = False) -> tuple[dict[str, list[Region]], dict]:
    """Merged regions per split, in genome order (the order of ``sizes``), and a report of what was clipped.

    ``chroms`` keeps only intervals on those chromosomes (the rest are counted as ``excluded``).
    """
    report = {"excluded_intervals": 0, "unknown_chrom_intervals": 0, "unknown_chrom_bases": 0,
              "clipped_intervals": 0, "clipped_bases": 0}
    keep = set(_check_chroms(chroms, sizes)) if chroms else None
    unknown, past_end, kept = [], [], []
    for iv in intervals:
        if keep is not None and iv.chrom not in keep:
            report["excluded_intervals"] += 1
        elif iv.chrom not in sizes:
            unknown.append(iv)
        elif iv.end > sizes[iv.chrom]:
            past_end.append(iv)
        else:
            kept.append(iv)
    if (unknown or past_end) and not clip:
        parts = []
        if unknown:
            parts.append(_listing(unknown, "BED intervals on chromosomes absent from the FASTA"))
        if past_end:
            parts.append(_listing([f"{iv} > {iv.chrom} length {sizes[iv.chrom]}" for iv in past_end],
                                  "BED intervals past a chromosome end"))
        raise ValueError("\n".join(parts) + "\nFix the BED, or pass --clip to drop/clip them (they are counted in "
                         "the manifest).")
    report["unknown_chrom_intervals"] = len(unknown)
    report["unknown_chrom_bases"] = sum(iv.end - iv.start for iv in unknown)
    for iv in past_end:
        size = sizes[iv.chrom]
        report["clipped_intervals"] += 1
        report["clipped_bases"] += iv.end - max(iv.start, size)
        if iv.start < size:
            kept.append(Interval(iv.chrom, iv.start, size, iv.split, iv.line))
    regions = _merge(kept, sizes)
    check_disjoint(regions)
    return regions, report


def regions_from_chroms(sizes: dict[str, int], *, valid: list[str] = (), test: list[str] = (),
                        chroms: list[str] | None = None) -> dict[str, list[Region]]:
    """Whole chromosomes per split: ``valid`` and ``test`` as listed, every other (kept) chromosome train."""
    valid, test = _check_chroms(valid, sizes), _check_chroms(test, sizes)
    both = sorted(set(valid) & set(test))
    if both:
        raise ValueError(f"chromosomes in both --valid-chroms and --test-chroms: {', '.join(both)}")
    keep = set(_check_chroms(chroms, sizes)) if chroms else set(sizes)
    missing = sorted((set(valid) | set(test)) - keep)
    if missing:
        raise ValueError(f"--valid-chroms/--test-chroms name chromosomes left out by --chroms: {', '.join(missing)}")
    regions: dict[str, list[Region]] = {}
    for name, size in sizes.items():
        if name in keep and size > 0:
            split = "valid" if name in valid else "test" if name in test else "train"
            regions.setdefault(split, []).append(Region(name, 0, size, split))
    return regions


def _check_chroms(names, sizes: dict[str, int]) -> list[str]:
    names = list(names or [])
    unknown = [n for n in names if n not in sizes]
    if unknown:
        raise ValueError(f"chromosomes not in the FASTA: {', '.join(unknown)} "
                         f"(it has {', '.join(list(sizes)[:8])}{', ...' if len(sizes) > 8 else ''})")
    return names


def _merge(intervals: list[Interval], sizes: dict[str, int]) -> dict[str, list[Region]]:
    order = {name: i for i, name in enumerate(sizes)}
    by_split: dict[str, list[Region]] = {}
    for iv in sorted(intervals, key=lambda iv: (iv.split, order[iv.chrom], iv.start, iv.end)):
        regions = by_split.setdefault(iv.split, [])
        last = regions[-1] if regions else None
        if last is not None and last.chrom == iv.chrom and iv.start <= last.end:
            last.end = max(last.end, iv.end)
            last.lines.append(iv.line)
        else:
            regions.append(Region(iv.chrom, iv.start, iv.end, iv.split, [iv.line]))
    return by_split


def check_disjoint(regions: dict[str, list[Region]]) -> None:
    """Raise ``ValueError`` listing every pair of regions of different splits that share a base."""
    rows = sorted((r for rs in regions.values() for r in rs), key=lambda r: (r.chrom, r.start))
    clashes, reach = [], None  # reach: the region reaching furthest right so far on this chromosome
    for r in rows:
        if reach is not None and reach.chrom == r.chrom and r.start < reach.end:
            clashes.append(f"{reach} overlaps {r}")
        if reach is None or reach.chrom != r.chrom or r.end > reach.end:
            reach = r
    if clashes:
        raise ValueError(_listing(clashes, "overlaps between splits (a base may belong to one split only)"))


def plan_chunks(regions: dict[str, list[Region]], chunk_len: int) -> dict[str, list[Chunk]]:
    """Cut each split's regions into chunks of ``chunk_len`` bases (the last of a region may be shorter)."""
    if chunk_len < 2:
        raise ValueError(f"chunk_len must be >= 2 (a window needs a base and its target), got {chunk_len}")
    plan = {}
    for split, rs in regions.items():
        chunks = []
        for r in rs:
            for s in range(r.start, r.end, chunk_len):
                chunks.append(Chunk(split, len(chunks), r.chrom, s, min(s + chunk_len, r.end)))
        plan[split] = chunks
    return plan


def plan_shards(chunks: list[Chunk], shard_size: int) -> list[list[Chunk]]:
    """Group consecutive chunks into shards of at most ``shard_size`` bases (at least one chunk each)."""
    shards, current, size = [], [], 0
    for c in chunks:
        if current and size + (c.end - c.start) > shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(c)
        size += c.end - c.start
    if current:
        shards.append(current)
    return shards

"""Readers for GenomicBenchmarks data (Grešová et al. 2023): sequence files and interval lists.

- Sequence files: one ``seq<TAB>label`` line per example (an optional header line ``seq<TAB>label``), plain or
  gzip. Labels are non-negative integers.
- Interval lists: a dataset directory as in the GenomicBenchmarks repository (``datasets/<name>/``):
  ``train/<class>.csv[.gz]`` and ``test/<class>.csv[.gz]``, each ``id,region,start,end,strand`` (0-based,
  half-open; ``-`` means the reverse complement). Resolved against a FASTA of the genome. The published
  sequences are upper case (Ensembl's unmasked ``dna`` FASTA), so bases are upper-cased by default.

Every reader raises ``ValueError`` naming the file and line of the first problem.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

from models.tokenizer import reverse_complement


@dataclass
class LabelledSequences:
    """Sequences (ASCII bytes) with integer labels, and the class names of the label ids."""

    seqs: list[bytes]
    labels: list[int]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.seqs)


def _open_text(path: Path):
    """A text handle on ``path`` (gzip recognised by its magic bytes), with a clear error when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        with path.open("rb") as f:
            magic = f.read(2)
        if magic == b"\x1f\x8b":
            handle = gzip.open(path, "rt", encoding="ascii", newline="")
            handle.read(1)  # fail here, not in the middle of the caller's loop, if the gzip stream is broken
            handle.seek(0)
            return handle
        return path.open("r", encoding="ascii", newline="")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it ({err})") from None


def read_sequence_file(path: str | Path, class_names: list[str] | None = None) -> LabelledSequences:
    """Read a ``seq<TAB>label`` file. Labels must be integers >= 0; ``class_names`` default to ``"0", "1", ...``."""
    path = Path(path)
    seqs, labels = [], []
    with _open_text(path) as f:
        try:
            for num, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t")
                if num == 1 and [x.strip().lower() for x in fields] == ["seq", "label"]:
                    continue
                if len(fields) != 2 or not fields[1].strip():
                    raise ValueError(f"{path}:{num}: expected 'sequence<TAB>label', got {len(fields)} field(s) "
                                     f"({line[:60]!r}); the label is missing")
                seq, label = fields[0].strip(), fields[1].strip()
                if not label.isdigit():
                    raise ValueError(f"{path}:{num}: label {label!r} is not a non-negative integer; labels are "
                                     f"class ids 0, 1, ...")
                if not seq:
                    raise ValueError(f"{path}:{num}: empty sequence")
                seqs.append(seq.encode("ascii"))
                labels.append(int(label))
        except UnicodeDecodeError as err:
            raise ValueError(f"{path}: not an ASCII text file ({err})") from None
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: cannot read it ({err})") from None
    if not seqs:
        raise ValueError(f"{path}: no sequences (empty split)")
    num_classes = max(labels) + 1
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    if num_classes > len(names):
        raise ValueError(f"{path}: label {num_classes - 1} but only {len(names)} class names {names}")
    return LabelledSequences(seqs, labels, names)


@dataclass(frozen=True)
class Interval:
    """One line of an interval list."""

    id: str
    region: str
    start: int
    end: int
    strand: str


def read_interval_list(path: str | Path) -> list[Interval]:
    """The intervals of one ``id,region,start,end,strand`` CSV (gzip or plain)."""
    path = Path(path)
    out = []
    with _open_text(path) as f:
        try:
            text = f.read()
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: cannot read it ({err})") from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or [h.strip() for h in header] != ["id", "region", "start", "end", "strand"]:
        raise ValueError(f"{path}: expected the header 'id,region,start,end,strand', got {header}")
    for num, row in enumerate(rows, 2):
        if not row:
            continue
        if len(row) != 5:
            raise ValueError(f"{path}:{num}: expected 5 fields id,region,start,end,strand, got {row}")
        ident, region, start, end, strand = (x.strip() for x in row)
        if not (start.isdigit() and end.isdigit()) or int(start) >= int(end):
            raise ValueError(f"{path}:{num}: start/end must be integers with start < end, got {start!r}, {end!r}")
        if strand not in ("+", "-"):
            raise ValueError(f"{path}:{num}: strand must be '+' or '-', got {strand!r}")
        out.append(Interval(ident, region, int(start), int(end), strand))
    if not out:
        raise ValueError(f"{path}: no intervals (empty split)")
    return out


def _record_name(reader, region: str, path: Path) -> str:
    """The FASTA record of ``region``: the same name, else with / without a ``chr`` prefix (UCSC vs Ensembl)."""
    for name in (region, "chr" + region, region[3:] if region.startswith("chr") else None):
        if name is not None and name in reader.entries:
            return name
    raise ValueError(f"region {region!r} is not a record of {path} (records: {sorted(reader.entries)[:8]}...)")


def resolve_intervals(intervals: list[Interval], fasta: str | Path, *, upper: bool = True) -> list[bytes]:
    """The bases of each interval in ``fasta`` (bgzip or plain), reverse-complemented on the ``-`` strand."""
    from data_prep.fasta import FastaReader

    fasta = Path(fasta)
    reader = FastaReader(fasta)
    out = []
    for iv in intervals:
        seq = reader.fetch(_record_name(reader, iv.region, fasta), iv.start, iv.end)
        if upper:
            seq = seq.upper()
        out.append(bytes(reverse_complement(seq)) if iv.strand == "-" else seq)
    return out


def intervals_inside(intervals: list[Interval], fasta: str | Path) -> list[Interval]:
    """The intervals that lie wholly inside a record of ``fasta``."""
    from data_prep.fasta import load_index

    lengths = {e.name: e.length for e in load_index(Path(fasta))[0]}
    out = []
    for iv in intervals:
        for name in (iv.region, "chr" + iv.region, iv.region[3:] if iv.region.startswith("chr") else None):
            if name in lengths and iv.end <= lengths[name]:
                out.append(iv)
                break
    return out


def interval_files(dataset_dir: str | Path, split: str) -> dict[str, Path]:
    """``{class name: CSV path}`` of one split of a GenomicBenchmarks dataset directory, sorted by class name."""
    folder = Path(dataset_dir) / split
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such directory; a GenomicBenchmarks dataset directory holds train/ and test/ "
                         f"with one <class>.csv.gz per class")
    files = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        for suffix in (".csv.gz", ".csv"):
            if name.endswith(suffix):
                files[name[: -len(suffix)]] = path
    if not files:
        raise ValueError(f"{folder}: no <class>.csv[.gz] files (empty split)")
    return files


def read_interval_dataset(dataset_dir: str | Path, split: str, fasta: str | Path,
                          class_names: list[str] | None = None,
                          inside_only: bool = False) -> LabelledSequences:
    """One split of a GenomicBenchmarks interval dataset as labelled sequences (label = index in class_names).

    ``inside_only`` keeps only the intervals that lie wholly inside a record of the FASTA (for a partial genome,
    such as a few chromosomes or the first megabases of some); otherwise such an interval is an error.
    """
    files = interval_files(dataset_dir, split)
    names = list(class_names) if class_names else sorted(files)
    missing = [n for n in names if n not in files]
    extra = [n for n in files if n not in names]
    if missing or extra:
        raise ValueError(f"{Path(dataset_dir) / split}: class files {sorted(files)} do not match class_names "
                         f"{names}")
    seqs, labels = [], []
    for label, name in enumerate(names):
        intervals = read_interval_list(files[name])
        if inside_only:
            intervals = intervals_inside(intervals, fasta)
        seqs += resolve_intervals(intervals, fasta)
        labels += [label] * len(intervals)
    if not seqs:
        raise ValueError(f"{Path(dataset_dir) / split}: no interval lies in {fasta} (empty split)")
    return LabelledSequences(seqs, labels, names)

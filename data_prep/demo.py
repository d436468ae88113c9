"""``python -m data_prep demo-shards``: the data step of ``make demo``, reusable by later demo steps.

Without ``--fasta`` it prepares the real GRCh38 sample embedded in the repository (``data/sample/hg38``:
chr2:1-2,333,275, chr20:1-3,000,000 and chrM, 5.35 Mb, bgzipped), offline and deterministic. ``--fasta hg38``
downloads hg38 chr22 from UCSC (checksum-verified, cached) and stops with a message saying how to pass a local
FASTA when offline; any other value is a FASTA path. Without ``--bed`` it writes
a split BED next to the shards: the first 90% of every record is train, the rest valid, so that a
one-chromosome genome still has a validation split. Re-running keeps finished shards (idempotent).
"""

from __future__ import annotations

from pathlib import Path

from data_prep.download import UCSC_BASE_URL, DownloadError, download_genome
from data_prep.fasta import load_index
from data_prep.prep import PrepConfig, prepare

DEMO_CHROM = "chr22"
SAMPLE_GENOME = Path(__file__).resolve().parents[1] / "data" / "sample" / "hg38" / "hg38_subset.fa.gz"
VALID_FRACTION = 0.1


def holdout_bed(fasta: Path, dest: Path, valid_fraction: float = VALID_FRACTION) -> Path:
    """Write a BED giving the last ``valid_fraction`` of each record to valid and the rest to train."""
    entries, _ = load_index(fasta)
    lines = []
    for e in entries:
        cut = int(e.length * (1 - valid_fraction))
        if cut > 0:
            lines.append(f"{e.name}\t0\t{cut}\ttrain")
        if cut < e.length:
            lines.append(f"{e.name}\t{cut}\t{e.length}\tvalid")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines) + "\n")
    return dest


def demo_shards(out: Path, *, fasta: Path | None = None, bed: Path | None = None, cache: Path = Path("cache"),
                base_url: str = UCSC_BASE_URL, workers: int = 1, progress: bool = True, log=print) -> Path:
    """Prepare the demo's shards under ``out/shards`` and return that folder."""
    out = Path(out)
    if fasta is None:
        if not SAMPLE_GENOME.is_file():
            raise ValueError(f"the embedded sample genome {SAMPLE_GENOME} is missing (data_prep is installed outside "
                             "its repository?): pass a genome, e.g. make demo GENOME=path/to/genome.fa")
        fasta = SAMPLE_GENOME
    elif str(fasta) == "hg38":
        try:
            fasta = download_genome("hg38", cache, [DEMO_CHROM], base_url=base_url, progress=progress, log=log)
        except DownloadError as err:
            raise DownloadError(f"could not get hg38 {DEMO_CHROM} from UCSC: {err}\nTo run the demo offline, "
                                "run make demo without GENOME= (the embedded sample genome) or pass a local genome: "
                                "make demo GENOME=path/to/genome.fa [BED=path/to/splits.bed]"
                                ) from None
    if bed is None:
        bed = holdout_bed(Path(fasta), out / "demo-split.bed")
    shards = out / "shards"
    # The demo folder is ours: a different GENOME= simply replaces the earlier shards.
    prepare(PrepConfig(fasta=Path(fasta), out=shards, bed=Path(bed), workers=workers, progress=progress,
                       overwrite=True), log=log)
    return shards

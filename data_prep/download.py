"""``python -m data_prep download ASSEMBLY``: UCSC's published genome files, checksum-verified, resumable, cached.

Any UCSC assembly by its database name (hg38, mm39, panTro6, gorGor6, ponAbe3, panPan3, susScr11, micMur2, ...).
Remote layout (UCSC ``goldenPath``; ``--base-url`` points at a mirror)::

    <base>/<assembly>/bigZips/<assembly>.fa.gz + md5sum.txt   the whole genome (every UCSC assembly)
    <base>/<assembly>/chromosomes/chrN.fa.gz + md5sum.txt     one chromosome per file (``--chroms``; only the
                                                              assemblies that UCSC publishes per chromosome,
                                                              e.g. hg38, mm39; scaffold assemblies have none)

Assemblies that UCSC serves only as ``<assembly>.2bit`` are refused with the conversion command.

Downloads go to ``OUT/<assembly>/<same relative path>``, first as ``*.part`` (an interrupted download is
continued with an HTTP range request), and are kept only when their md5 matches UCSC's ``md5sum.txt``.
UCSC's files are plain gzip, which cannot be read at random, so they are decompressed once into a plain
FASTA next to them (with its ``.fai``); a stamp file records the md5 sums it was made from, so a second call
returns the cached FASTA without downloading anything.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

from data_prep.fasta import load_index

UCSC_BASE_URL = "https://hgdownload.soe.ucsc.edu/goldenPath"
# Examples for help texts; any name of UCSC's database form is accepted (and checked against its md5sum.txt).
ASSEMBLIES = ("hg38", "mm39", "panTro6", "gorGor6", "ponAbe3", "panPan3", "susScr11", "micMur2")
_ASSEMBLY_NAME = re.compile(r"^[a-z][A-Za-z]{1,15}[0-9]{1,3}$")
_BLOCK = 1 << 20


class DownloadError(ValueError):
    """A file could not be fetched or failed its checksum; the message says what to do."""


def genome_fasta_name(assembly: str, chroms: list[str] | None) -> str:
    """File name of the decompressed FASTA for a request."""
    if not chroms:
        return f"{assembly}.fa"
    if len(chroms) == 1:
        return f"{chroms[0]}.fa"
    if len(chroms) <= 4:
        return f"{assembly}.{'_'.join(chroms)}.fa"
    return f"{assembly}.{len(chroms)}chroms-{hashlib.sha256(','.join(chroms).encode()).hexdigest()[:8]}.fa"


def download_genome(assembly: str, out: Path, chroms: list[str] | None = None, *, base_url: str = UCSC_BASE_URL,
                    progress: bool = True, log=print, timeout: float = 60.0) -> Path:
    """Fetch ``assembly`` (whole, or the listed chromosomes) and return the path of a plain, indexed FASTA."""
    check_assembly_name(assembly)
    root = Path(out) / assembly
    folder = "chromosomes" if chroms else "bigZips"
    files = [f"{c}.fa.gz" for c in chroms] if chroms else [f"{assembly}.fa.gz"]
    url = f"{base_url.rstrip('/')}/{assembly}/{folder}"
    if chroms:
        absent = (f"UCSC publishes no per-chromosome files for {assembly} (scaffold-level assemblies have none): "
                  "drop --chroms to download the whole genome")
    else:
        absent = (f"UCSC has no assembly {assembly!r}: check the name (database names such as "
                  f"{', '.join(ASSEMBLIES[:5])}; list: https://hgdownload.soe.ucsc.edu/downloads.html)")
    sums = _md5_listing(f"{url}/md5sum.txt", root / folder / "md5sum.txt", timeout, log, absent)
    missing = [f for f in files if f not in sums]
    if missing and not chroms:
        twobit = f"{assembly}.2bit"
        how = (f"it serves {twobit} only: fetch it and run `twoBitToFa {twobit} {assembly}.fa`, then pass "
               f"{assembly}.fa as a local FASTA" if twobit in sums else
               f"it lists {', '.join(sorted(sums)[:6]) or 'nothing'}")
        raise DownloadError(f"{url}/md5sum.txt does not list {files[0]}: {how}")
    if missing:
        raise DownloadError(f"{url}/md5sum.txt does not list {', '.join(missing)} (unknown chromosome name?)")
    fasta = root / genome_fasta_name(assembly, chroms)
    stamp = fasta.with_name(fasta.name + ".md5.json")
    wanted = {f: sums[f] for f in files}
    if fasta.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        log(f"{fasta}: cached (made from files matching {url}/md5sum.txt)")
        return fasta
    for f in files:
        _fetch_verified(f"{url}/{f}", root / folder / f, sums[f], timeout, progress, log)
    _decompress([root / folder / f for f in files], fasta, log)
    stamp.write_text(json.dumps(wanted))
    load_index(fasta)  # writes the .fai once, so readers never race to build it
    return fasta


def check_assembly_name(assembly: str) -> str:
    """UCSC database names are letters then a version number (hg38, panTro6, susScr11); anything else is refused
    before it becomes part of a URL or a folder name."""
    if not isinstance(assembly, str) or not _ASSEMBLY_NAME.match(assembly):
        raise ValueError(f"{assembly!r} is not a UCSC assembly name: use the database name, letters then a version "
                         f"number, e.g. {', '.join(ASSEMBLIES)}")
    return assembly


def _md5_listing(url: str, cache: Path, timeout: float, log, absent: str = "") -> dict[str, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode()
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(text)
    except (urllib.error.URLError, OSError) as err:
        if isinstance(err, urllib.error.HTTPError) and err.code == 404 and absent:
            # the server answered that the folder does not exist: a cached listing would be stale, not helpful
            raise DownloadError(f"{url}: HTTP 404 Not Found; {absent}") from None
        if not cache.is_file():
            raise DownloadError(f"cannot fetch {url} ({getattr(err, 'reason', err)}); offline? Pass a local FASTA "
                                "instead, or a reachable mirror with --base-url") from None
        log(f"cannot reach {url}; using the checksums cached in {cache}")
        text = cache.read_text()
    sums = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(8 * _BLOCK):
            h.update(block)
    return h.hexdigest()


def _fetch_verified(url: str, dest: Path, md5: str, timeout: float, progress: bool, log) -> None:
    """Download ``url`` to ``dest`` unless a verified copy is there; continue a ``.part`` file if present."""
    if dest.is_file() and _md5(dest) == md5:
        log(f"{dest}: cached, md5 ok")
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(2):  # a second, fresh attempt if a continued download fails its checksum
        resumed = _fetch(url, part, timeout, progress, log)
        got = _md5(part)
        if got == md5:
            part.replace(dest)
            return
        part.unlink()
        if not resumed:
            break
        log(f"{url}: continued download failed its checksum; downloading it again from the start")
    raise DownloadError(f"{url}: md5 {got} does not match md5sum.txt ({md5}); the download was corrupted or the "
                        "mirror is inconsistent; run the command again or use another --base-url")


def _fetch(url: str, part: Path, timeout: float, progress: bool, log) -> bool:
    """Fetch into ``part``, continuing from its current size; returns whether it continued a partial file."""
    from tqdm import tqdm

    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is not a prefix of the remote one: start over
            part.unlink()
            return _fetch(url, part, timeout, progress, log)
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"cannot download {url} ({getattr(err, 'reason', err)}); offline? Pass a local "
                            "FASTA instead, or a reachable mirror with --base-url") from None
    with resp:
        resumed = have > 0 and resp.status == 206
        if have and not resumed:
            log(f"{url}: the server does not continue downloads; starting from the beginning")
        size = int(resp.headers.get("Content-Length") or 0)
        with open(part, "ab" if resumed else "wb") as fh, tqdm(
                total=(have if resumed else 0) + size or None, initial=have if resumed else 0, unit="B",
                unit_scale=True, desc=Path(url).name, disable=not progress, file=sys.stderr) as bar:
            while block := resp.read(_BLOCK):
                fh.write(block)
                bar.update(len(block))
    if resumed:
        log(f"{url}: continued a partial download from byte {have:,}")
    return resumed


def _decompress(sources: list[Path], fasta: Path, log) -> None:
    """gunzip ``sources`` one after the other into ``fasta`` (atomically)."""
    tmp = fasta.with_name(fasta.name + ".tmp")
    with open(tmp, "wb") as out:
        for src in sources:
            last = b"\n"
            with gzip.open(src, "rb") as fh:
                while block := fh.read(16 * _BLOCK):
                    out.write(block)
                    last = block[-1:]
            if last != b"\n":
                out.write(b"\n")
    tmp.replace(fasta)
    fai = Path(str(fasta) + ".fai")
    fai.unlink(missing_ok=True)  # a new FASTA needs a new index
    log(f"wrote {fasta}")

"""``inspect`` (what a shard folder holds, from its manifest) and ``verify`` (is every byte right)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from data_prep.dna import base_stats, dna_counts, is_dna, strip_line_ends
from data_prep.fasta import FastaReader, fai_sha256, load_index
from data_prep.format import Manifest, load_manifest, sha256_file
from data_prep.regions import Chunk
from data_prep.writer import read_chunk


def summary(manifest: Manifest) -> dict:
    """Per split: shards, samples, bases, N and soft-masked fractions, dropped chunks and bases."""
    out = {}
    for name in manifest.splits:
        sp = manifest.split(name)
        bases = max(sp["bases"], 1)
        out[name] = {"shards": len(sp["shards"]), "samples": sp["samples"], "bases": sp["bases"],
                     "n_fraction": round(sp["n_bases"] / bases, 6),
                     "soft_masked_fraction": round(sp["soft_masked_bases"] / bases, 6),
                     "dropped_chunks": sp["dropped_chunks"], "dropped_bases": sp["dropped_bases"],
                     "regions": sp["regions"], "region_bases": sp["region_bases"]}
    return out


def format_summary(manifest: Manifest) -> str:
    """The human-readable ``inspect`` report."""
    d = manifest.data
    split_def = d["split_definition"]
    how = f"BED {split_def['bed']}" if split_def["mode"] == "bed" else \
        f"chromosomes (valid: {','.join(split_def['valid']) or '-'}; test: {','.join(split_def['test']) or '-'})"
    lines = [f"{manifest.root}: shard format v{d['version']}, chunk_len {d['chunk_len']:,}, "
             f"min A/C/G/T fraction {d['min_acgt']}",
             f"source {d['source']['fasta']} ({d['source']['records']} records); splits from {how}"]
    report = split_def.get("clip_report")
    if report and any(report.values()):
        lines.append("clipped: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in report.items()))
    head = f"{'split':<8}{'shards':>7}{'samples':>9}{'bases':>15}{'N frac':>9}{'soft-mask':>10}" \
           f"{'dropped chunks':>16}{'dropped bases':>15}"
    lines.append(head)
    for name, s in summary(manifest).items():
        lines.append(f"{name:<8}{s['shards']:>7}{s['samples']:>9}{s['bases']:>15,}{s['n_fraction']:>9.4f}"
                     f"{s['soft_masked_fraction']:>10.4f}{s['dropped_chunks']:>16}{s['dropped_bases']:>15,}")
    return "\n".join(lines)


def verify(path: Path, fasta: Path | None = None, log=print) -> list[str]:
    """Check every shard of a folder; returns the problems found (empty when all is well).

    Without ``fasta``: sha256 sums, tar structure, sample metadata, offsets, DNA bytes and the recorded
    counts. With ``fasta``: also every sample's bytes against the genome at its coordinates, and every
    dropped chunk against the threshold.
    """
    manifest = load_manifest(path)
    problems: list[str] = []
    reader = None
    if fasta is not None:
        entries, _ = load_index(Path(fasta))
        if fai_sha256(entries) != manifest.data["source"]["fai_sha256"]:
            problems.append(f"{fasta} is not the FASTA these shards were prepared from (its index differs)")
            return problems
        reader = FastaReader(Path(fasta), entries)
    for name in manifest.splits:
        sp = manifest.split(name)
        for shard in sp["shards"]:
            problems += _verify_shard(manifest, name, shard, reader)
        problems += _verify_totals(name, sp)
        for shard in sp["shards"] if reader is not None else []:
            problems += _verify_dropped(manifest, name, shard, reader)
        log(f"{name}: {len(sp['shards'])} shards, {sp['samples']} samples checked"
            + (" against the FASTA" if reader is not None else ""))
    return problems


def _verify_totals(name: str, sp: dict) -> list[str]:
    problems = []
    for key in ("samples", "bases", "n_bases", "soft_masked_bases", "dropped_bases"):
        if sum(sh[key] for sh in sp["shards"]) != sp[key]:
            problems.append(f"split {name}: shard {key} do not add up to the split total")
    if sp["bases"] + sp["dropped_bases"] != sp["region_bases"]:
        problems.append(f"split {name}: kept {sp['bases']} + dropped {sp['dropped_bases']} bases != region "
                        f"bases {sp['region_bases']}")
    return problems


def _verify_shard(manifest: Manifest, split: str, shard: dict, reader: FastaReader | None) -> list[str]:
    path = manifest.root / shard["path"]
    if not path.is_file():
        return [f"shard {path} is missing"]
    if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
        return [f"shard {path}: size or sha256 differs from the manifest (corrupted or replaced)"]
    problems, n_total, lower_total = [], 0, 0
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            expected = [f"{key}.{ext}" for key, *_ in shard["index"] for ext in ("json", "seq")]
            if [m.name for m in members] != expected:
                return [f"shard {path}: members differ from the manifest's sample list"]
            for (key, chrom, start, end, offset), mj, ms in zip(shard["index"], members[::2], members[1::2]):
                meta = json.loads(tar.extractfile(mj).read())
                seq = tar.extractfile(ms).read()
                want = {"chrom": chrom, "start": start, "end": end, "split": split}
                if meta != want or ms.offset_data != offset or len(seq) != end - start or not is_dna(seq):
                    problems.append(f"shard {path}: sample {key} metadata, offset, length or bytes are wrong")
                    continue
                n, lower = dna_counts(seq)  # is_dna(seq) held above
                n_total, lower_total = n_total + n, lower_total + lower
                if reader is not None:
                    genome, _, _ = read_chunk(reader, Chunk(split, 0, chrom, start, end), manifest.data["iupac_to_n"])
                    if genome != seq:
                        problems.append(f"shard {path}: sample {key} differs from {chrom}:{start}-{end} in the FASTA")
    except (tarfile.TarError, OSError, ValueError) as err:
        return [f"shard {path} cannot be read as a tar ({err})"]
    if (n_total, lower_total) != (shard["n_bases"], shard["soft_masked_bases"]) and not problems:
        problems.append(f"shard {path}: N / soft-masked counts differ from the manifest")
    return problems


def _verify_dropped(manifest: Manifest, split: str, shard: dict, reader: FastaReader) -> list[str]:
    problems = []
    for key, chrom, start, end, n in shard["dropped"]:
        bases = strip_line_ends(reader.fetch_raw(chrom, start, end), iupac_to_n=manifest.data["iupac_to_n"])
        got_n, _, _ = base_stats(bases)
        if got_n != n or (end - start - n) >= manifest.data["min_acgt"] * (end - start):
            problems.append(f"dropped chunk {key} ({chrom}:{start}-{end}) does not match its record")
    return problems

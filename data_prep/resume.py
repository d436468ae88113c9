"""What an earlier (finished or crashed) preparation left in the output folder, and what can be kept.

Each finished shard's record (sha256, samples, plan hash) is saved under ``OUT/.partial/`` as soon as the
shard is renamed into place; the manifest holds the same records once the run is complete. A shard is kept
when its record's plan hash equals the new plan's and the file's size and sha256 match the record.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from data_prep.format import sha256_file

_COMPARED = ("version", "chunk_len", "min_acgt", "shard_size", "iupac_to_n", "chroms", "regions")


def stale_reason(manifest_path: Path, head: dict) -> str | None:
    """None when the manifest describes the plan in ``head``; otherwise what differs, in words."""
    try:
        old = json.loads(Path(manifest_path).read_text())
    except (OSError, json.JSONDecodeError):
        return "its manifest.json is unreadable"
    if old.get("plan") == head["plan"]:
        return None
    diffs = [k for k in _COMPARED if old.get(k) != head.get(k)]
    if old.get("source", {}).get("fai_sha256") != head["source"]["fai_sha256"]:
        diffs.insert(0, "FASTA")
    old_def = {k: v for k, v in old.get("split_definition", {}).items() if k not in ("bed", "clip_report")}
    new_def = {k: v for k, v in head["split_definition"].items() if k not in ("bed", "clip_report")}
    if old_def != new_def:
        diffs.append("split definition")
    return "differs in: " + ", ".join(diffs or ["shard plan"])


class PartialStore:
    """Shard records of earlier runs (``OUT/.partial/*.json`` and an adopted manifest)."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self.dir = self.out / ".partial"
        self._records: dict[str, dict] = {}
        if self.dir.is_dir():
            for f in sorted(self.dir.glob("*.json")):
                try:
                    rec = json.loads(f.read_text())
                    self._records[rec["path"]] = rec
                except (OSError, json.JSONDecodeError, KeyError, TypeError):
                    f.unlink(missing_ok=True)  # a record cut short by a crash: its shard is redone

    def adopt_manifest(self, manifest_path: Path, plan: str) -> None:
        """Use the shard records of a finished run's manifest as candidates (same plan only)."""
        try:
            old = json.loads(Path(manifest_path).read_text())
        except (OSError, json.JSONDecodeError):
            return
        if old.get("plan") != plan:
            return
        for split in old.get("splits", {}).values():
            for rec in split.get("shards", []):
                self._records.setdefault(rec["path"], rec)

    def verified(self, tasks, log) -> tuple[dict, list]:
        """Split ``tasks`` into shards already done (records, checksum verified) and shards to write."""
        done, todo = {}, []
        for task in tasks:
            rec = self._records.get(task.relpath)
            path = self.out / task.relpath
            ok = (rec is not None and rec.get("plan") == task.plan and path.is_file()
                  and path.stat().st_size == rec.get("bytes") and sha256_file(path) == rec.get("sha256"))
            if ok:
                done[task.relpath] = rec
            else:
                if rec is not None and path.is_file():
                    log(f"{path}: does not match its record from an earlier run; rewriting it")
                todo.append(task)
        return done, todo

    def save(self, record: dict) -> None:
        """Persist a finished shard's record (atomically) so that a crashed run can keep the shard."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = record["path"].replace("/", "--") + ".json"
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(self.dir / name)

    def clear(self) -> None:
        """Drop the records once the manifest holds them."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def remove_unplanned(self, tasks, log) -> None:
        """Delete ``<split>/shard-*.tar`` files that the new plan does not contain (``--overwrite`` only)."""
        planned = {task.relpath for task in tasks}
        for path in sorted(self.out.glob("*/shard-*.tar")):
            rel = path.relative_to(self.out).as_posix()
            if rel not in planned:
                log(f"removing {path} (not part of the new preparation)")
                path.unlink()

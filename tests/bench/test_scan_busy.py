"""bench/scan_busy.py at a tiny length: both paths, quiet and with one busy loop, one JSON row per (L, busy)."""

import json

import pytest

from bench.scan_busy import main


@pytest.mark.slow  # four fresh processes importing torch: ~25 s on 2 busy cores
def test_scan_busy_writes_both_paths(tmp_path):
    out = tmp_path / "s.json"
    assert main(["--min-log2", "6", "--max-log2", "6", "--busy", "0", "1", "--reps", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["complete"] and [(r["L"], r["busy"]) for r in doc["rows"]] == [(64, 0), (64, 1)]
    sliced = {(p["path"], p["busy"]): p["channel_slices"] for p in doc["points"]}
    assert sliced == {("slices", 0): True, ("slices", 1): True, ("regions", 0): False, ("regions", 1): False}

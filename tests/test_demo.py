"""``make demo`` end to end, offline, on the GRCh38 sample embedded in the repository (what a bare clone runs)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]  # not from conftest: see tests/test_sample_data.py


@pytest.mark.slow
@pytest.mark.distributed
def test_make_demo_runs_offline_on_the_embedded_genome(tmp_path):
    data, run = tmp_path / "data", tmp_path / "runs" / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("GENOME", "BED")}
    done = subprocess.run(["make", "-s", "demo", f"DEMO_DATA={data}", f"DEMO_RUN={run}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((data / "shards" / "manifest.json").read_text())
    assert manifest["source"]["fasta"].endswith("data/sample/hg38/hg38_subset.fa.gz")
    result = json.loads((run / "eval.json").read_text())
    rows = result if isinstance(result, list) else result["results"]  # one row per evaluated window length
    ppl = [row["ppl"] for row in rows]
    assert ppl and max(ppl) < 4.0, result
    assert (run / "loss.png").stat().st_size > 0 and (run / "export" / "model.safetensors").is_file()

"""bench/kernels.py: refuses clearly without CUDA; its --cpu-smoke mode runs end to end through the interpreter."""

import importlib.util
import json
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "kernels.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_refuses_without_cuda(monkeypatch, capsys):
    bench = _load()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_cpu_smoke_writes_json(tmp_path, capsys):
    bench = _load()
    assert bench.main(["--cpu-smoke", "--out", str(tmp_path)]) == 0
    files = list(tmp_path.glob("kernels-cpu-*.json"))
    assert len(files) == 1
    report = json.loads(files[0].read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["cpu_smoke"] and report["peak_GBps"] is None
    ops = {r["op"] for r in report["results"]}
    assert ops == {"fftconv", "scan"}
    for r in report["results"]:
        assert r["triton_fwd_ms"] > 0 and r["torch_fwd_bwd_ms"] > 0 and r["triton_fwd_bwd_GBps"] > 0
    for c in report["accuracy"]:  # bf16 inputs and output against the fp32 reference: bf16 rounding
        assert c["max_rel_err"] < 1e-2

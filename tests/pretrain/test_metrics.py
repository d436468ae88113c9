"""metrics.jsonl + TensorBoard + console line; MFU inputs; stop-signal recording."""

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pretrain.metrics import MetricsLogger, format_line, mfu, peak_flops_per_device, truncate_after
from pretrain.signals import StopRequest


def _tb_scalars(tb_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_records_reach_jsonl_tensorboard_and_console(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, enabled=True)
    for step in (1, 2):
        logger.log({"step": step, "tokens": 100 * step, "seq_len": 64, "loss": 1.3, "ppl": math.exp(1.3),
                    "lr": 1e-3, "grad_norm": None, "tokens_per_s": 5.0, "mfu": None, "max_mem_gb": 0.5})
    logger.log({"step": 2, "seq_len": 64, "loss": 1.2, "ppl": math.exp(1.2), "eval_tokens": 10}, split="valid")
    logger.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("split", "train") for r in lines] == ["train", "train", "valid"]
    assert lines[0]["mfu"] is None and lines[1]["tokens"] == 200
    scalars = _tb_scalars(tmp_path / "tb")
    assert {"train/loss", "train/ppl", "train/lr", "train/tokens_per_s", "train/seq_len", "train/max_mem_gb",
            "valid/loss", "valid/ppl"} <= set(scalars)
    assert "train/mfu" not in scalars  # unknown on CPU: not written as a number
    assert scalars["train/loss"] == [(1, pytest.approx(1.3)), (2, pytest.approx(1.3))]
    out = capsys.readouterr().out
    assert "step 2 | L 64 | loss 1.3000" in out and "mfu -" in out and "[valid] step 2" in out


def test_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=False)
    logger.log({"step": 1, "loss": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_resume_drops_records_past_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(1, 8)))
    assert truncate_after(path, 4) == 3
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2, 3, 4]
    logger = MetricsLogger(tmp_path, enabled=True, resume_step=2)
    logger.close()
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_non_finite_values_become_null_in_json(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.log({"step": 1, "loss": float("nan"), "ppl": float("inf")})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": None, "ppl": None}


def test_mfu_is_null_without_a_peak_and_exact_with_one():
    assert peak_flops_per_device("bf16") is None  # CPU: no made-up figure
    assert peak_flops_per_device("bf16", configured=1e12) == 1e12
    assert mfu(6e6, 1e4, None, 2) is None
    assert mfu(6e6, 1e4, 1e12, 2) == pytest.approx(6e6 * 1e4 / 2e12)
    assert "mfu -" in format_line({"step": 1, "mfu": None})


def test_stop_request_records_the_first_signal_and_restores_handlers():
    before = signal.getsignal(signal.SIGUSR1)
    stop = StopRequest()
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal_name == "SIGUSR1"
    stop.restore()
    assert signal.getsignal(signal.SIGUSR1) == before


REPO_ROOT = Path(__file__).resolve().parents[2]
_CTRL_C = """
import os, signal, sys, time
from pretrain.signals import StopRequest
stop = StopRequest()
os.kill(os.getpid(), signal.SIGINT)            # Ctrl-C from the terminal
os.kill(os.getpid(), signal.SIGINT)            # the same Ctrl-C forwarded by a launcher: not a second one
assert stop.requested and stop.interrupted and stop.signal_name == "SIGINT"
print("still running", flush=True)
time.sleep(1.2)
os.kill(os.getpid(), signal.SIGINT)            # the user's second Ctrl-C: the process ends here
time.sleep(5)
print("not aborted", flush=True)
"""


def test_ctrl_c_asks_for_a_save_and_a_second_one_aborts_at_once():
    done = subprocess.run([sys.executable, "-c", _CTRL_C], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, RANK="0"))
    assert done.returncode == -signal.SIGINT, done.stderr
    assert done.stdout == "still running\n" and "Traceback" not in done.stderr
    assert done.stderr.count("interrupted: finishing this step and saving") == 1


def test_sigterm_is_not_an_interrupt():
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and not stop.interrupted
    finally:
        stop.restore()

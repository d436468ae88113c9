"""Checkpoint manager: atomic publish, retention, verification, fallback from a damaged latest.

The engine here is a stand-in with DeepSpeed's save/load signature that writes one file per rank; the real
DeepSpeed round trip is covered by the training tests.
"""

import logging
import os
import random

import numpy as np
import pytest
import torch

from pretrain.checkpoint import CheckpointManager, rng_state, set_rng_state, verify


class FileEngine:
    """Saves ``value`` to <dir>/<tag>/model.pt like DeepSpeed's save_checkpoint(save_dir, tag, ...)."""

    def __init__(self, value=0.0):
        self.value = value

    def save_checkpoint(self, save_dir, tag, client_state, save_latest):
        assert save_latest is False  # the manager owns `latest`
        path = f"{save_dir}/{tag}"
        os.makedirs(path, exist_ok=True)
        torch.save({"value": self.value}, f"{path}/model.pt")

    def load_checkpoint(self, load_dir, tag, **kwargs):
        self.value = torch.load(f"{load_dir}/{tag}/model.pt")["value"]
        return f"{load_dir}/{tag}", {}


def _manager(root, keep=2):
    return CheckpointManager(root, keep=keep, rank=0, world_size=1, barrier=lambda: None)


def _save(mgr, step, value):
    return mgr.save(FileEngine(value), step, trainer_state={"step": step, "world_size": 1},
                    rank_state={"loader": {"pos": step}}, config_yaml="run: {}\n")


def test_save_publishes_latest_and_keeps_the_last_k(tmp_path):
    mgr = _manager(tmp_path / "ckpt", keep=2)
    for step in (10, 20, 30):
        _save(mgr, step, float(step))
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["latest", "step-00000020", "step-00000030"]  # no temporaries left
    assert (tmp_path / "ckpt" / "latest").read_text() == "step-00000030"
    assert verify(tmp_path / "ckpt" / "step-00000030") is None
    engine = FileEngine()
    trainer, rank = mgr.load(engine, mgr.find_resumable())
    assert (engine.value, trainer["step"], rank["loader"]["pos"]) == (30.0, 30, 30)


def test_resaving_a_step_replaces_it(tmp_path):
    mgr = _manager(tmp_path, keep=3)
    _save(mgr, 5, 1.0)
    _save(mgr, 5, 2.0)
    engine = FileEngine()
    mgr.load(engine, mgr.find_resumable())
    assert engine.value == 2.0


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest"])
def test_damaged_latest_falls_back_to_the_previous_checkpoint(tmp_path, caplog, damage):
    mgr = _manager(tmp_path, keep=3)
    _save(mgr, 1, 1.0)
    newest = _save(mgr, 2, 2.0)
    target = newest / "model.pt"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-7])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (newest / "MANIFEST.json").unlink()
    with caplog.at_level(logging.WARNING):
        chosen = mgr.find_resumable()
    assert chosen.name == "step-00000001"
    assert "step-00000002 is damaged" in caplog.text and "falling back" in caplog.text


def test_unpublished_newer_directory_and_missing_latest(tmp_path, caplog):
    mgr = _manager(tmp_path, keep=5)
    assert mgr.find_resumable() is None
    _save(mgr, 1, 1.0)
    _save(mgr, 2, 2.0)
    (tmp_path / "latest").write_text("step-00000001")  # as if the crash came before `latest` moved
    assert mgr.find_resumable().name == "step-00000001"
    (tmp_path / "latest").write_text("")  # a truncated `latest` file
    assert mgr.find_resumable().name == "step-00000002"
    (tmp_path / "latest").write_text("step-00000009")
    with caplog.at_level(logging.WARNING):
        assert mgr.find_resumable().name == "step-00000002"
    assert "not a checkpoint here" in caplog.text


def test_other_world_size_is_refused(tmp_path):
    _save(_manager(tmp_path), 1, 1.0)
    other = CheckpointManager(tmp_path, keep=2, rank=0, world_size=4, barrier=lambda: None)
    with pytest.raises(ValueError, match="written by 1 processes but this run has 4"):
        other.load(FileEngine(), other.find_resumable())


def test_rng_state_round_trip():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a

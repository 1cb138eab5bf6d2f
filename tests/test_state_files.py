"""State files are written atomically, damaged ones are named, and a killed checkpoint write leaves no litter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from metadg.bench import read_result
from metadg.config import atomic_write_text
from metadg.engine.checkpoint import CheckpointError, read_checkpoint, save_checkpoint


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write_text(path, '{"old": 1}')

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, '{"new": 2, "much": "' + "x" * 10_000 + '"}')
    assert path.read_text() == '{"old": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    monkeypatch.undo()
    atomic_write_text(path, '{"new": 2}')
    assert path.read_text() == '{"new": 2}'


@pytest.mark.parametrize("text", ['{"name": "x", "run_dir": "r", "best_st', "", "[1, 2]", '{"unexpected": 1}'])
def test_a_damaged_results_file_names_the_folder_to_remove(tmp_path, text):
    path = tmp_path / "cell-0123456789" / "results.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(CheckpointError, match=rf"{path}: damaged .*remove {path.parent} to run that cell again"):
        read_result(path)


def test_a_checkpoint_write_killed_earlier_leaves_its_temporary_folder_only_until_the_next_save(tmp_path):
    stale = tmp_path / ".best.tmp-killed"
    stale.mkdir()
    (stale / "trainable.safetensors").write_bytes(b"half a file")
    save_checkpoint(tmp_path / "best", {"w": torch.ones(2)}, {"step": 3})
    assert not stale.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    tensors, meta = read_checkpoint(tmp_path / "best")
    assert torch.equal(tensors["w"], torch.ones(2)) and meta["step"] == 3


def test_a_flipped_byte_in_the_tensors_is_caught_by_the_checksum(tmp_path):
    save_checkpoint(tmp_path / "best", {"w": torch.arange(64, dtype=torch.float32)}, {"step": 1})
    weights = tmp_path / "best" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # inside the tensor data: the header still parses, the value stays finite
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"damaged: its tensors do not match the checksum in meta\.json"):
        read_checkpoint(tmp_path / "best")


def test_a_training_state_with_a_part_missing_says_how_to_go_on(tiny_config):
    import json

    from metadg.config import build_experiment
    from metadg.engine.resume import state_dir
    from metadg.engine.trainer import Trainer

    tiny_config["train"].update({"steps": 4, "checkpoint_every": 2, "eval_every": 2})
    run_dir = Path(Trainer(build_experiment(tiny_config)).fit().run_dir)
    (run_dir / "results.json").unlink()  # unfinished again: `metadg run` would resume it
    meta_path = state_dir(run_dir) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["state"]["__dict__"] = [kv for kv in meta["state"]["__dict__"] if kv[0] != "optimizer"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=rf"the saved training state is damaged[\s\S]*remove {state_dir(run_dir)}"):
        Trainer(build_experiment(tiny_config), run_dir=run_dir).fit()


def test_an_error_after_training_keeps_the_training_and_a_rerun_only_evaluates(tiny_config, monkeypatch):
    from metadg.config import build_experiment
    from metadg.engine.trainer import Trainer

    tiny_config["train"].update({"steps": 4, "checkpoint_every": 3, "eval_every": 2})
    clean = Trainer(build_experiment(tiny_config)).fit()
    real = Trainer._evaluate

    def disk_full(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Trainer, "_evaluate", disk_full)
    tiny_config["name"] = "interrupted"
    first = Trainer(build_experiment(tiny_config))
    with pytest.raises(OSError, match="No space left"):
        first.fit()
    assert (first.best_dir / "meta.json").is_file() and not (first.run_dir / "results.json").exists()

    def no_training(self):
        raise AssertionError("a finished training ran again")

    monkeypatch.setattr(Trainer, "_evaluate", real)
    monkeypatch.setattr(Trainer, "_train_step", no_training)
    again = Trainer(build_experiment(tiny_config), run_dir=first.run_dir).fit()
    assert again.eval == clean.eval and again.best_step == clean.best_step and again.steps_done == 4

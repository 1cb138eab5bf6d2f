"""Crash-safe training: atomic checkpoints, exact resume after SIGKILL, clean stops on SIGINT/SIGTERM, full disks."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metadg.engine.checkpoint import CheckpointError, pack_state, read_checkpoint, save_checkpoint, unpack_state
from metadg.config import build_experiment
from metadg.engine.resume import StopRequested, load_state, rng_state, set_rng_state, state_dir
from metadg.engine.trainer import Trainer


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(Path(run_dir) / "checkpoints" / "best")[0]


def _scores(run_dir: Path) -> str:
    return (Path(run_dir) / "scores" / "all.txt").read_text()


def test_pack_state_round_trips_optimizer_and_rng_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": rng_state(), "array": np.arange(5.0), "none": None}
    tensors: dict[str, torch.Tensor] = {}
    packed = pack_state(state, tensors)
    json.dumps(packed)  # must be plain JSON
    back = unpack_state(json.loads(json.dumps(packed)), tensors)
    assert set(back["optimizer"]["state"]) == {0, 1}  # int keys survive JSON
    for k, v in state["optimizer"]["state"][0].items():
        assert torch.equal(back["optimizer"]["state"][0][k], v)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    np.testing.assert_array_equal(back["array"], state["array"])
    expected = (torch.rand(3), np.random.rand(), random.random())
    set_rng_state(back["rng"])
    assert (torch.rand(3).tolist(), np.random.rand(), random.random()) == (expected[0].tolist(), *expected[1:])


def test_pack_state_refuses_objects_it_cannot_store():
    with pytest.raises(TypeError, match="state/x: cannot save a object"):
        pack_state({"x": object()}, {}, "state")


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_checkpoint(target, {"w": torch.ones(3)}, {"step": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("metadg.checkpoint.save_file", full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(target, {"w": torch.zeros(3)}, {"step": 2})
    tensors, meta = read_checkpoint(target)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no half-written folder left behind


def test_a_crash_between_the_two_renames_falls_back_to_the_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    save_checkpoint(target, {"w": torch.ones(3)}, {"step": 1})
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # old moved aside, new not yet in place: the process dies here
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr("metadg.checkpoint.os.replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(target, {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.setattr("metadg.checkpoint.os.replace", real_replace)
    assert not target.exists()
    tensors, meta = read_checkpoint(target)
    assert meta["step"] == 1 and torch.equal(tensors["w"], torch.ones(3))


@pytest.mark.parametrize("workers", [0, 1, "auto"])
def test_stop_on_sigint_then_resume_matches_an_uninterrupted_run(tiny_config, tmp_path, workers, monkeypatch):
    tiny_config["train"].update({"steps": 8, "eval_every": 2, "checkpoint_every": 3, "num_workers": workers})
    if workers == "auto":  # a worker starts mid-run (after the probe steps), and RawBoost runs batched on the device
        monkeypatch.setattr("metadg.engine.workers.choose_workers", lambda *a: 1)
        tiny_config["task"]["augment"] = {"rawboost": 5, "device": "training_device"}
    tiny_config["algorithm"] = {"name": "mldg"}  # its own generator must resume too
    whole = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "whole").fit()

    def interrupt(step, dev):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C would, in the middle of a run

    exp = build_experiment(tiny_config)
    with pytest.raises(StopRequested, match="SIGINT after step 4"):
        Trainer(exp, run_dir=tmp_path / "cut", on_eval=interrupt).fit()
    assert load_state(tmp_path / "cut")[2]["step"] == 4
    assert not (tmp_path / "cut" / "results.json").exists()
    resumed = Trainer(build_experiment(tiny_config), run_dir=tmp_path / "cut").fit()

    assert (resumed.best_step, resumed.steps_done) == (whole.best_step, whole.steps_done)
    got, want = _weights(tmp_path / "cut"), _weights(tmp_path / "whole")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert _scores(tmp_path / "cut") == _scores(tmp_path / "whole")


def test_resume_refuses_a_run_folder_of_another_config(tiny_config, tmp_path):
    tiny_config["train"].update({"steps": 4, "eval_every": 2, "checkpoint_every": 2})

    def interrupt(step, dev):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(StopRequested, match="SIGTERM"):
        Trainer(build_experiment(tiny_config), run_dir=tmp_path / "run", on_eval=interrupt).fit()
    tiny_config["train"]["lr"] = 0.1
    with pytest.raises(CheckpointError, match="unfinished run of a different config"):
        Trainer(build_experiment(tiny_config), run_dir=tmp_path / "run").fit()


def _cli(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-m", "metadg", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _wait_for_state(run_dir: Path, proc: subprocess.Popen, min_step: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"training ended before it could be killed: {proc.communicate()}"
        try:
            step = json.loads((state_dir(run_dir) / "meta.json").read_text())["step"]
        except (FileNotFoundError, ValueError, KeyError):
            step = -1
        if step >= min_step:
            return step
        time.sleep(0.01)
    raise AssertionError("no training state appeared")


def test_sigkill_mid_training_then_resume_gives_identical_weights_and_scores(tiny_config, tmp_path):
    tiny_config["train"].update({"steps": 60, "eval_every": 7, "checkpoint_every": 4})
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    whole = _cli(["run", str(config), "-o", f"output_dir={tmp_path / 'whole'}"], tmp_path)
    assert whole.wait(300) == 0, whole.communicate()

    killed = _cli(["run", str(config), "-o", f"output_dir={tmp_path / 'cut'}"], tmp_path)
    run_dir = tmp_path / "cut" / "tiny"
    _wait_for_state(run_dir, killed, min_step=8)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    assert not (run_dir / "results.json").exists()
    resumed = _cli(["run", str(run_dir)], tmp_path)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err

    got, want = _weights(run_dir), _weights(tmp_path / "whole" / "tiny")
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert _scores(run_dir) == _scores(tmp_path / "whole" / "tiny")
    assert json.loads((run_dir / "results.json").read_text())["steps_done"] == 60


def test_sigterm_stops_after_the_step_with_a_checkpoint_and_exit_code_130(tiny_config, tmp_path):
    tiny_config["train"].update({"steps": 100000, "eval_every": 50, "checkpoint_every": None})
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    proc = _cli(["run", str(config)], tmp_path)
    run_dir = Path(tiny_config["output_dir"]) / "tiny"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "best").exists():  # first evaluation done: training is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "stopped by SIGTERM" in err and f"metadg run {run_dir}" in err
    step = load_state(run_dir)[2]["step"]
    assert 50 <= step < 100000


def test_a_run_saved_with_pre_0_2_config_keys_resumes(tiny_config, tmp_path):
    # An unfinished run from before train.bonafide_fraction moved to the task still resumes.
    tiny_config["train"].update({"steps": 4, "eval_every": 2, "checkpoint_every": 2})

    def interrupt(step, dev):
        os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(StopRequested):
        Trainer(build_experiment(tiny_config), run_dir=tmp_path / "run", on_eval=interrupt).fit()
    meta_path = state_dir(tmp_path / "run") / "meta.json"
    meta = json.loads(meta_path.read_text())
    config = meta["config"]
    config["train"]["bonafide_fraction"] = config["task"].pop("bonafide_fraction")  # as 0.1 wrote it
    meta_path.write_text(json.dumps(meta))
    assert Trainer(build_experiment(config), run_dir=tmp_path / "run").fit().steps_done == 4

"""Hostile checkpoints and inputs of `metadg eval` and `metadg score` (the policy: see tests/test_bad_input.py)."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from metadg.engine.checkpoint import CheckpointError
from metadg.engine.trainer import load_trained
from hostile import SR, audio_cases, cli, tone


# ---------------------------------------------------------------- checkpoints, `metadg eval` and `metadg score`


class Evil:
    """Unpickling this creates MARKER: the proof that a file was (wrongly) unpickled."""

    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickles(marker: Path) -> tuple[bytes, bytes]:
    """A plain pickle and a torch .pt file that create `marker` when unpickled."""
    Evil.marker = str(marker)
    buf = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "evil": Evil()}, buf)
    return pickle.dumps(Evil()), buf.getvalue()


def _checkpoint_cases(d: Path, good: Path) -> dict[str, Path]:
    meta, weights = (good / "meta.json").read_bytes(), (good / "trainable.safetensors").read_bytes()
    plain_pickle, torch_pt = _pickles(d / "MARKER")
    rng = np.random.default_rng(0)
    layouts = {
        "random bytes": {"meta.json": rng.bytes(200), "trainable.safetensors": rng.bytes(200)},
        "JSON of another format": {"meta.json": json.dumps({"architectures": ["Wav2Vec2Model"]}).encode(),
                                   "trainable.safetensors": weights},
        "a pickle under the safetensors name": {"meta.json": meta, "trainable.safetensors": plain_pickle},
        "a torch .pt under the safetensors name": {"meta.json": meta, "trainable.safetensors": torch_pt},
        "only .pt/.bin pickles": {"model.pt": torch_pt, "pytorch_model.bin": torch_pt, "checkpoint.pkl": plain_pickle},
        "empty folder": {},
    }
    cases = {}
    for name, files in layouts.items():
        folder = d / re.sub(r"\W+", "-", name)
        folder.mkdir()
        for file, data in files.items():
            (folder / file).write_bytes(data)
        cases[name] = folder
    (d / "a-file").write_bytes(torch_pt)
    cases["a file, not a folder"] = d / "a-file"
    return cases


CHECKPOINT_CASES = ["random bytes", "JSON of another format", "a pickle under the safetensors name",
                    "a torch .pt under the safetensors name", "only .pt/.bin pickles", "empty folder", "a file, not a folder"]


def test_the_marker_pickles_would_fire_if_unpickled(tmp_path):
    plain, pt = _pickles(tmp_path / "MARKER")
    pickle.loads(plain)
    assert (tmp_path / "MARKER").exists()
    (tmp_path / "MARKER").unlink()
    torch.load(io.BytesIO(pt), weights_only=False)
    assert (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_not_a_checkpoint_is_refused_and_never_unpickled(tmp_path, run_dir, sandbox, capsys, case):
    folder = _checkpoint_cases(tmp_path, run_dir / "checkpoints" / "best")[case]
    with pytest.raises(CheckpointError, match=re.escape(str(folder))):
        load_trained(folder)
    sf.write(tmp_path / "clip.wav", tone(), SR)
    box = sandbox(run_dir)
    for command in (["score", str(folder), str(tmp_path / "clip.wav"), "--out", str(tmp_path / "out.csv")],
                    ["eval", str(folder), "--out", str(tmp_path / "eval")]):
        status, _, err = cli(capsys, *command)
        assert status == 1 and str(folder) in err
    assert not (tmp_path / "MARKER").exists()
    assert box.written() == set()


def _patched_checkpoint(tmp_path: Path, good: Path, meta_text: str | None = None, tensors=None) -> Path:
    """A copy of `good` with meta.json replaced by `meta_text` and/or the tensors mapped through `tensors`."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "meta.json").write_text(meta_text if meta_text is not None else (good / "meta.json").read_text())
    weights = load_file(str(good / "trainable.safetensors"))
    save_file(tensors(weights) if tensors else weights, str(folder / "trainable.safetensors"))
    return folder


BROKEN_CHECKPOINTS = {  # a metadg checkpoint broken one way: how its meta.json and/or tensors are replaced
    "meta.json is a JSON list": dict(meta_text="[1, 2]"),
    "meta.json nested 100,000 deep": dict(meta_text="[" * 100_000 + "]" * 100_000),
    "meta.json without config": dict(meta_text=json.dumps({"format": "metadg-checkpoint/1"})),
    "tensors of another model": dict(tensors=lambda w: {"x": torch.zeros(3)}),
    "tensors of the wrong shape": dict(tensors=lambda w: {k: torch.zeros(1) for k in w}),
    "NaN tensors": dict(tensors=lambda w: {k: torch.full_like(v, float("nan")) for k, v in w.items()}),
}


@pytest.mark.parametrize("case", list(BROKEN_CHECKPOINTS))
def test_corrupt_metadg_checkpoint_is_refused(tmp_path, run_dir, capsys, case):
    good = run_dir / "checkpoints" / "best"
    folder = _patched_checkpoint(tmp_path, good, **BROKEN_CHECKPOINTS[case])
    with pytest.raises(CheckpointError, match=re.escape(str(folder))):
        load_trained(folder)


def test_score_reports_each_unreadable_file_in_its_own_row(tmp_path, run_dir, sandbox, capsys):
    inbox = tmp_path / "inbox"
    bad = {p.name: pattern for p, _, pattern in audio_cases(inbox).values() if p.is_file()}
    out = tmp_path / "scores.csv"
    box = sandbox(run_dir)
    status, stdout, _ = cli(capsys, "score", str(run_dir), str(inbox), "--out", str(out))
    assert status == 0 and f"{len(bad)} unreadable" in stdout
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out.open())}
    assert set(rows) == set(bad) | {"good.wav", "good-flac.flac"}  # every file has a row, none lost
    for name, pattern in bad.items():
        assert rows[name]["score"] == "" and re.search(pattern, rows[name]["error"]), (name, rows[name])
    for name in ("good.wav", "good-flac.flac"):
        assert np.isfinite(float(rows[name]["score"])) and rows[name]["error"] == ""
    assert box.written() == {out}


def test_score_reports_a_dangling_symlink(tmp_path, run_dir, capsys):
    (tmp_path / "inbox").mkdir()
    sf.write(tmp_path / "inbox" / "good.wav", tone(), SR)
    (tmp_path / "inbox" / "gone.wav").symlink_to(tmp_path / "unmounted" / "gone.wav")
    cli(capsys, "score", str(run_dir), str(tmp_path / "inbox"), "--out", str(tmp_path / "s.csv"))
    rows = {Path(r["path"]).name: r for r in csv.DictReader((tmp_path / "s.csv").open())}
    assert "file not found" in rows["gone.wav"]["error"]


@pytest.fixture
def eval_sets(tmp_path) -> dict[str, Path]:
    """`--sets` files for a list corpus with two unusable files (NaN samples, truncated), per on_error policy."""
    audio_cases(tmp_path / "audio")
    sf.write(tmp_path / "audio" / "other.wav", tone(hz=440.0), SR)
    lines = ["path,label", "audio/good.wav,bonafide", "audio/good-flac.flac,spoof", "audio/other.wav,spoof",
             "audio/nan.wav,spoof", "audio/wav-data.wav,bonafide"]
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    sets = {}
    for policy in ("raise", "skip"):
        sets[policy] = tmp_path / f"{policy}.yaml"
        spec = {"name": "list", "path": str(tmp_path / "list.csv"), "on_error": policy}
        sets[policy].write_text(yaml.safe_dump({"eval": {"x": spec}}))
    return sets


def test_eval_on_unreadable_audio_names_the_file(tmp_path, run_dir, eval_sets, sandbox, capsys):
    out = run_dir / "eval-raise"
    box = sandbox(run_dir)
    status, _, err = cli(capsys, "eval", str(run_dir), "--sets", str(eval_sets["raise"]), "--out", str(out))
    assert status == 1 and re.search(rf"{re.escape(str(tmp_path / 'audio' / 'nan.wav'))}: NaN or infinite samples", err)
    assert all(p == out or out in p.parents for p in box.written())


def test_eval_skips_and_counts_unreadable_audio(run_dir, eval_sets, sandbox, capsys):
    out = run_dir / "eval-skip"
    box = sandbox(run_dir)
    status, stdout, _ = cli(capsys, "eval", str(run_dir), "--sets", str(eval_sets["skip"]), "--out", str(out))
    assert status == 0 and re.search(r"^x +\d+\.\d+$", stdout, re.MULTILINE)
    assert json.loads((out / "metrics.json").read_text())["x"]["skipped"] == 2  # nan.wav and the truncated wav-data.wav
    written = box.written()
    assert out / "metrics.json" in written and all(p == out or out in p.parents for p in written)


@pytest.mark.parametrize("name", ["../../evil", "/tmp/evil"])
def test_an_eval_set_named_like_a_path_is_refused_and_nothing_is_written(tmp_path, run_dir, eval_sets, sandbox,
                                                                          capsys, name):
    spec = yaml.safe_load(eval_sets["skip"].read_text())["eval"]["x"]
    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump({"eval": {name: spec}}))
    box, existed = sandbox(run_dir), Path("/tmp/evil").exists()
    status, _, err = cli(capsys, "eval", str(run_dir), "--sets", str(sets), "--out", str(tmp_path / "out"))
    assert status == 2 and f"eval: {name!r} must not contain '/'" in err
    assert box.written() == set() and Path("/tmp/evil").exists() == existed

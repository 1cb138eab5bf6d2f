"""Scoring audio the model cannot take, non-finite outputs, and `metadg score` streaming its rows with resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from metadg.engine.scoring import utterance_logits
from metadg.engine.utterances import LoadError, Utterances
from hostile import SR, cli, tone


def _rows(path: Path) -> dict[str, dict[str, str]]:
    return {Path(r["path"]).name: r for r in csv.DictReader(path.open())}


class Picky(torch.nn.Module):
    """Fails on inputs shorter than 400 samples and returns NaN for inputs whose first sample is 9."""

    num_classes = 2

    def forward(self, x, lengths=None):
        if x.shape[1] < 400:
            raise RuntimeError("Calculated padded input size per channel: (3). Kernel size: (10).")
        out = torch.cat([x[:, :1], -x[:, :1]], 1)  # the first sample: padding does not change it
        return torch.where((x[:, :1] == 9.0), torch.nan, out)


def _utts(waves, on_error):
    return Utterances([f"u{i}" for i in range(len(waves))], np.zeros(len(waves), dtype=np.int64), {},
                      waves.__getitem__, name="set", on_error=on_error)


def test_an_utterance_the_model_cannot_take_is_isolated_from_its_batch():
    waves = [np.full(1000, 0.5, np.float32), np.full(300, 0.1, np.float32), np.full(1050, -0.2, np.float32),
             np.concatenate([[9.0], np.zeros(999)]).astype(np.float32)]
    utts = _utts(waves, "skip")
    logits = utterance_logits(Picky(), utts, batch_size=8, progress=False)
    assert np.allclose(logits[0], [0.5, -0.5]) and np.allclose(logits[2], [-0.2, 0.2])
    assert np.isnan(logits[1]).all() and np.isnan(logits[3]).all()
    assert utts.skipped == {"model cannot take the audio": 1, "non-finite model output": 1}
    assert "300 samples" in utts.errors["u1"] and "not finite" in utts.errors["u3"]
    with pytest.raises(LoadError, match=r"set: u1: the model cannot take this audio \(300 samples\)"):
        utterance_logits(Picky(), _utts(waves, "raise"), batch_size=8, progress=False)
    with pytest.raises(LoadError, match=r"set: u1: the model.s output is not finite"):  # waves[3] is u1 here
        utterance_logits(Picky(), _utts([waves[0], waves[3]], "raise"), batch_size=8, progress=False)


def test_every_output_non_finite_is_a_diverged_model_not_bad_files():
    waves = [np.concatenate([[9.0], np.zeros(999)]).astype(np.float32)] * 3
    with pytest.raises(FloatingPointError, match="NaN/Inf for every one of the 3 utterances"):
        utterance_logits(Picky(), _utts(waves, "skip"), progress=False)


def test_score_gives_short_and_extreme_clips_their_own_error_rows(tmp_path, run_dir, capsys):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sf.write(inbox / "good.wav", tone(), SR)
    sf.write(inbox / "short.wav", tone(0.01), SR)  # 160 samples: under wav2vec2's 400-sample receptive field
    sf.write(inbox / "huge.wav", np.full(SR // 4, 1e30, np.float32), SR, subtype="FLOAT")
    status, stdout, _ = cli(capsys, "score", str(run_dir), str(inbox), "--out", str(tmp_path / "s.csv"))
    rows = _rows(tmp_path / "s.csv")
    assert status == 0 and set(rows) == {"good.wav", "short.wav", "huge.wav"}
    assert rows["good.wav"]["error"] == "" and np.isfinite(float(rows["good.wav"]["score"]))
    assert "the model cannot take this audio (160 samples)" in rows["short.wav"]["error"]
    assert rows["short.wav"]["score"] == ""
    assert rows["huge.wav"]["score"] == "" and rows["huge.wav"]["error"], rows["huge.wav"]
    assert "2 unreadable" in stdout


def test_score_writes_rows_as_it_goes_and_a_rerun_continues(tmp_path, run_dir, monkeypatch):
    from metadg.tasks.audio import score_files as module

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for i in range(5):
        sf.write(inbox / f"f{i}.wav", tone(hz=200.0 + 50 * i), SR)
    out = tmp_path / "s.csv"
    real, calls = module._score_batch, []

    def killed_after_two_batches(detector, files, *rest):
        calls.append([p.name for p in files])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the third batch
        return real(detector, files, *rest)

    monkeypatch.setattr(module, "_score_batch", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        module.score_files(run_dir / "checkpoints" / "best", [inbox], out, files_per_batch=2)
    assert set(_rows(out)) == {"f0.wav", "f1.wav", "f2.wav", "f3.wav"}  # two batches were on disk already
    with out.open("a") as fh:
        fh.write(str(inbox / "f4.wav") + ",0.1")  # and a row cut short by the kill
    calls.clear()
    monkeypatch.setattr(module, "_score_batch", lambda *a: calls.append([p.name for p in a[1]]) or real(*a))
    assert module.score_files(run_dir / "checkpoints" / "best", [inbox], out, files_per_batch=2) == (5, 0)
    assert calls == [["f4.wav"]]  # only what was missing
    rows = list(csv.DictReader(out.open()))
    assert sorted(Path(r["path"]).name for r in rows) == [f"f{i}.wav" for i in range(5)]
    fresh = tmp_path / "fresh.csv"
    module.score_files(run_dir / "checkpoints" / "best", [inbox], fresh)
    one_go, resumed = _rows(fresh), _rows(out)  # resumed scores equal scoring in one go (batching: last digit)
    assert set(one_go) == set(resumed)
    for name, row in one_go.items():
        assert row["decision"] == resumed[name]["decision"]
        assert float(row["score"]) == pytest.approx(float(resumed[name]["score"]), abs=1e-5)


def test_eval_counts_a_clip_too_short_for_the_model_as_a_skip(tmp_path, run_dir, capsys):
    sf.write(tmp_path / "good.wav", tone(), SR)
    sf.write(tmp_path / "other.wav", tone(hz=440.0), SR)
    sf.write(tmp_path / "short.wav", tone(0.01), SR)
    (tmp_path / "list.csv").write_text("path,label\ngood.wav,bonafide\nother.wav,spoof\nshort.wav,spoof\n")
    for policy, expected in (("skip", 0), ("raise", 1)):
        sets = tmp_path / f"{policy}.yaml"
        sets.write_text(yaml.safe_dump({"eval": {"x": {"name": "list", "path": str(tmp_path / "list.csv"),
                                                       "on_error": policy}}}))
        status, _, err = cli(capsys, "eval", str(run_dir), "--sets", str(sets), "--out", str(tmp_path / policy))
        assert status == expected, err
        if policy == "skip":
            assert json.loads((tmp_path / "skip" / "metrics.json").read_text())["x"]["skipped"] == 1
        else:
            assert "short.wav" in err and "the model cannot take this audio (160 samples)" in err

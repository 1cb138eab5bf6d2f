"""Scoring a trained run as a detector: merged LoRA, windows over long audio, decisions at an operating point."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hostile import cli, tone
from metadg.config import ConfigError
from metadg.deploy.detector import Detector, Windows
from metadg.engine.scoring import class_log_odds, window_starts
from metadg.tasks.spoof.calibration import Calibrator

SR = 16000


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


@pytest.fixture(scope="module")
def waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in (8000, 12000, 40000)]


def test_merged_lora_scores_as_the_unmerged_model_and_leaves_the_run_alone(run_dir, waves):
    before = _digest(run_dir)
    merged, plain = Detector(run_dir), Detector(run_dir, merge=False)
    assert not any(".lora_" in n for n, _ in merged.model.named_parameters())
    assert any(".lora_" in n for n, _ in plain.model.named_parameters())
    np.testing.assert_allclose(merged.score(waves).logits, plain.score(waves).logits, rtol=1e-5, atol=1e-5)
    assert _digest(run_dir) == before


def test_windows_are_aggregated_as_asked(run_dir, waves):
    det = Detector(run_dir)
    whole = Windows(seconds=1.0, overlap=0.5)
    out = det.score(waves, whole, per_window=True)
    long = 2  # 40,000 samples in 1 s windows with 0.5 overlap
    starts = window_starts(40000, 16000, 0.5)
    assert [round(a * SR) for a, _, _ in out.windows[long]] == starts and len(starts) == 4
    assert out.windows[long][-1][1] == 40000 / SR  # the last window ends with the file
    per = np.stack([row for _, _, row in out.windows[long]])
    np.testing.assert_allclose(out.logits[long], per.mean(axis=0), rtol=1e-6)
    # Each window scored alone gives its window row: a window is just that stretch of audio.
    alone = det.score([waves[long][s:s + 16000] for s in starts]).logits
    np.testing.assert_allclose(alone, per, rtol=1e-5, atol=1e-6)
    odds = class_log_odds(per)
    for how, pick in (("max", np.argmax), ("min", np.argmin)):
        got = det.score(waves, Windows(1.0, 0.5, how)).logits[long]
        np.testing.assert_allclose(got, per[pick(odds)], rtol=1e-6)
    assert len(out.windows[0]) == 1  # a short file is one window


def test_bad_window_settings_name_the_option():
    with pytest.raises(ConfigError, match="--window"):
        Windows(seconds=0.01)
    with pytest.raises(ConfigError, match="--overlap"):
        Windows(overlap=1.0)
    with pytest.raises(ConfigError, match="--aggregate"):
        Windows(aggregate="median")


def test_decisions_follow_the_operating_point(run_dir, waves):
    det = Detector(run_dir)
    logits = det.score(waves).logits
    scores = class_log_odds(logits)
    _, rows = det.table(logits, {"threshold": float(np.median(scores))})
    assert [r[2] for r in rows] == ["bonafide" if s > np.median(scores) else "spoof" for s in scores]
    p, c_miss, c_fa = 0.05, 1.0, 10.0
    llr = Calibrator.from_dict(det.meta["calibration"]).transform(scores)
    bayes = math.log(p * c_fa / ((1 - p) * c_miss))  # written out here, not taken from the task
    _, rows = det.table(logits, {"prior": p, "c_miss": c_miss, "c_fa": c_fa})
    assert [r[2] for r in rows] == ["bonafide" if v > bayes else "spoof" for v in llr]
    assert f"{bayes:.4f}" in det.operating_point({"prior": p, "c_miss": c_miss, "c_fa": c_fa})
    assert "EER threshold" in det.operating_point()
    with pytest.raises(ConfigError, match="--prior"):
        det.operating_point({"prior": 1.5})


def test_metadg_score_cli_windows_and_operating_point(run_dir, tmp_path, capsys):
    folder = tmp_path / "clips"
    folder.mkdir()
    sf.write(folder / "long.wav", tone(2.5, hz=300.0), SR)
    sf.write(folder / "short.wav", tone(0.5), SR)
    out, per = tmp_path / "s.csv", tmp_path / "w.csv"
    status, stdout, err = cli(capsys, "score", str(run_dir), str(folder), "--out", str(out), "--window", "1",
                              "--per-window", str(per), "--prior", "0.05", "--c-fa", "10")
    assert status == 0, err
    assert "decision: calibrated LLR > -0.6419" in stdout  # ln(0.05 · 10 / 0.95)
    rows, windows = _rows(out), _rows(per)
    assert {Path(r["path"]).name for r in rows} == {"long.wav", "short.wav"}
    long = [w for w in windows if w["path"].endswith("long.wav")]
    assert [float(w["start_s"]) for w in long] == [s / SR for s in window_starts(40000, 16000, 0.5)]
    by = {Path(r["path"]).name: r for r in rows}
    mean_llr = np.mean([float(w["llr"]) for w in long])
    assert float(by["long.wav"]["llr"]) == pytest.approx(mean_llr, abs=1e-5)  # mean of window LLRs (affine map)
    with pytest.raises(SystemExit) as stop:  # argparse refuses both operating points at once
        cli(capsys, "score", str(run_dir), str(folder), "--threshold", "0", "--prior", "0.1")
    assert stop.value.code == 2 and "not allowed with argument" in capsys.readouterr().err

"""The spoof task's score files: ASVspoof 2019/2021 `utt score`, the analysis CSV, ASVspoof 5 TSV, DET plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from metadg.engine.utterances import Utterances


def write_score_file(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """`utt score` lines, the ASVspoof 2019/2021 CM score-file layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for utt, s in zip(utts.ids, scores):
            if np.isfinite(s):  # skipped utterances (on_error: skip) have no score
                fh.write(f"{utt} {s:.6f}\n")
    return path


def write_score_csv(path: str | Path, utts: Utterances, scores: np.ndarray, llr: np.ndarray | None = None) -> Path:
    """CSV with utterance, score, calibrated LLR (if any), label and every attribute, for analysis."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(utts.attrs)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["utt", "score", *(["llr"] if llr is not None else []), "label", *keys])
        for i, (utt, s) in enumerate(zip(utts.ids, scores)):
            label = "bonafide" if utts.labels[i] == 1 else "spoof"
            extra = [f"{llr[i]:.6f}"] if llr is not None else []
            writer.writerow([utt, f"{s:.6f}", *extra, label, *(utts.attrs[k][i] for k in keys)])
    return path


def write_asvspoof5_scores(path: str | Path, utts: Utterances, scores: np.ndarray) -> Path:
    """The ASVspoof 5 submission layout: tab separated, header `filename<TAB>cm-score`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        fh.write("filename\tcm-score\n")
        for utt, s in zip(utts.ids, scores):
            if np.isfinite(s):
                fh.write(f"{utt}\t{s:.6f}\n")
    return path


def det_png(path: str | Path, sets: dict[str, tuple[Utterances, np.ndarray]]) -> Path | None:
    """One DET curve per labelled set (probit axes); None when no set has both classes."""
    from metadg.tasks.spoof.metrics import det_curve
    from metadg.tasks.spoof.plots import det_plot

    curves = {}
    for name, (utts, scores) in sets.items():
        ok = np.isfinite(scores)  # skipped utterances (on_error: skip) score NaN
        bona, spoof = scores[ok & (utts.labels == 1)], scores[ok & (utts.labels == 0)]
        if bona.size and spoof.size:
            frr, far, _ = det_curve(bona, spoof)
            curves[name] = (frr, far)
    return det_plot(curves, path) if curves else None


def write_scores(
    directory: str | Path, name: str, utts: Utterances, scores: np.ndarray, llr: np.ndarray | None = None
) -> list[Path]:
    """Every score file a set needs: `utt score`, the CSV, and the ASVspoof 5 TSV for that corpus."""
    directory = Path(directory)
    written = [write_score_file(directory / f"{name}.txt", utts, scores), write_score_csv(directory / f"{name}.csv", utts, scores, llr)]
    if "asvspoof5" in set(utts.attrs.get("corpus", [])):
        written.append(write_asvspoof5_scores(directory / f"{name}.asvspoof5.tsv", utts, scores))
    return written

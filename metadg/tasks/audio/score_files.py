"""`metadg score`: audio files and folders scored by a trained model into a CSV with the task's columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from metadg.engine.build import load_trained
from metadg.engine.scoring import scoring_options, utterance_logits
from metadg.engine.utterances import Utterances
from metadg.tasks.audio.loading import AudioError, load_audio

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au"}


def collect_audio(paths: list[str | Path]) -> list[Path]:
    """Audio files named directly or found (recursively, sorted) in the named folders."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            # A dangling symlink is kept so that it gets its own error row instead of vanishing.
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and (p.is_file() or p.is_symlink()))
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    return found


def score_files(checkpoint: str | Path, paths: list[str | Path], out_csv: str | Path, device: str = "cpu") -> tuple[int, int]:
    """Score audio files/folders with a trained model into a CSV (the task's columns); returns (scored, unreadable)."""
    exp, model, _, meta = load_trained(checkpoint, device)
    task = exp.task.build(seed=exp.seed)
    files = collect_audio(paths)
    waves, kept, errors = [], [], {}
    for path in files:
        try:
            waves.append(load_audio(path))
            kept.append(path)
        except AudioError as exc:  # one bad file must not lose the others' scores
            errors[path] = str(exc)
    utts = Utterances([str(p) for p in kept], np.zeros(len(kept), dtype=np.int64), {}, waves.__getitem__)
    logits = utterance_logits(model, utts, device=device, progress=True, **scoring_options(exp.train))
    header, rows = task.score_table(logits, meta)
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    by_path = dict(zip(kept, rows))
    with out_csv.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", *header, "error"])
        for path in files:
            writer.writerow([str(path), *by_path[path], ""] if path in by_path else [str(path), *[""] * len(header), errors[path]])
    return len(kept), len(errors)

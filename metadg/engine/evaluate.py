"""Evaluation, one path for training and `metadg eval`: logits per set → task metrics and outputs; scoring files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metadg.engine.scoring import (  # noqa: F401  old home of these names (metadg.evaluation)
    MAX_PADDING,
    length_batches,
    score_utterances,
    scoring_options,
    segments,
    utterance_logits,
)
from metadg.engine.utterances import Utterances

if TYPE_CHECKING:
    from metadg.tasks.base import Task

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".aiff", ".aif", ".au"}


@dataclass
class Evaluation:
    """What evaluating some sets produced: metrics per set, their logits, and the files written over all of them."""

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: dict[str, tuple[Utterances, np.ndarray]] = field(default_factory=dict)
    summary_files: list[Path] = field(default_factory=list)


def evaluate_sets(
    model: nn.Module,
    task: Task,
    sets: dict[str, Utterances],
    out_dir: str | Path,
    *,
    calibration: dict[str, Any] | None,
    device: torch.device | str,
    options: dict[str, Any],
    progress: bool = True,
) -> Evaluation:
    """Score each set into (N, C) logits, compute the task's metrics, write its per-set files and summary files."""
    out_dir = Path(out_dir)
    ev = Evaluation()
    for name, utts in sets.items():
        logits = utterance_logits(model, utts, device=device, progress=progress, desc=f"eval {name}", **options)
        ev.results[name] = task.metrics(logits, utts, calibration)
        task.write_set(out_dir, name, utts, logits, calibration)
        ev.scored[name] = (utts, logits)
    if ev.scored:
        out_dir.mkdir(parents=True, exist_ok=True)
        ev.summary_files = task.write_summary(out_dir, ev.scored)
    return ev


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


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    eval_specs: dict[str, dict] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Score a trained model on its own eval sets (or `eval_specs`); write the task's files and metrics.json."""
    from metadg.config import build_experiment
    from metadg.engine.build import load_trained

    exp, model, _, meta = load_trained(checkpoint, device)
    if eval_specs is not None:
        data = exp.to_dict()
        data["task"]["eval"] = eval_specs
        exp = build_experiment(data, source=f"{checkpoint} + eval sets")
    task = exp.task.build(seed=exp.seed)
    out_dir = Path(out_dir)
    ev = evaluate_sets(model, task, task.eval_sets(), out_dir, calibration=meta.get("calibration"), device=device,
                       options=scoring_options(exp.train), progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(ev.results, indent=2), encoding="utf-8")
    return ev.results


def score_files(checkpoint: str | Path, paths: list[str | Path], out_csv: str | Path, device: str = "cpu") -> tuple[int, int]:
    """Score audio files/folders with a trained model into a CSV (the task's columns); returns (scored, unreadable)."""
    from metadg.engine.build import load_trained
    from metadg.tasks.audio.loading import AudioError, load_audio

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

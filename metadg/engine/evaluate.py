"""Evaluation, one path for training and `metadg eval`: logits per set → task metrics and outputs; scoring files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from metadg.config import atomic_write_text, plain_name
from metadg.engine.run_folder import RunFolderLock
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
    for name in sets:  # what a task plugin names its sets becomes file names in out_dir: never a path
        plain_name(name, "evaluation set name")
    for name, utts in sets.items():
        logits = utterance_logits(model, utts, device=device, progress=progress, desc=f"eval {name}", **options)
        ev.results[name] = task.metrics(logits, utts, calibration)
        task.write_set(out_dir, name, utts, logits, calibration)
        ev.scored[name] = (utts, logits)
    if ev.scored:
        out_dir.mkdir(parents=True, exist_ok=True)
        ev.summary_files = task.write_summary(out_dir, ev.scored)
    return ev


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

    exp, model, adapter, meta = load_trained(checkpoint, device)
    adapter.merge(model)  # plain-model speed; the saved adapter is untouched (scores agree to float rounding)
    if eval_specs is not None:
        data = exp.to_dict()
        data["task"]["eval"] = eval_specs
        exp = build_experiment(data, source=f"{checkpoint} + eval sets")
    task = exp.task.build(seed=exp.seed)
    out_dir = Path(out_dir)
    with RunFolderLock(out_dir, "evaluation"):  # two evaluations into one folder would mix their files
        ev = evaluate_sets(model, task, task.eval_sets(), out_dir, calibration=meta.get("calibration"), device=device,
                           options=scoring_options(exp.train), progress=progress)
        atomic_write_text(out_dir / "metrics.json", json.dumps(ev.results, indent=2))
    return ev.results


def __getattr__(name: str) -> object:
    # Scoring audio files needs audio loading, which is the audio tasks' layer, not the engine's.
    if name in ("score_files", "collect_audio", "AUDIO_SUFFIXES"):
        raise AttributeError(f"{name} moved to metadg.tasks.audio.score_files")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

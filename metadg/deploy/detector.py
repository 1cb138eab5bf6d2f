"""A trained run as a detector: LoRA merged for scoring, long audio in windows, decisions at an operating point.

`metadg score`, the MLflow model and the exports all score through this one class, so a file
gets the same numbers whichever way it is scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metadg.config import ConfigError
from metadg.engine.build import load_trained
from metadg.engine.checkpoint import checkpoint_of
from metadg.engine.scoring import AGGREGATES, scoring_options, utterance_logits
from metadg.engine.utterances import Utterances

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Windows:
    """How long audio is cut: `seconds` per window (None = the run's eval setting), `overlap`, and `aggregate`."""

    seconds: float | None = None
    overlap: float | None = None
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds * SAMPLE_RATE >= 400:
            raise ConfigError(f"--window: {self.seconds} s is shorter than the 400 samples a model needs")
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise ConfigError(f"--overlap: {self.overlap} must be in [0, 1)")
        if self.aggregate not in AGGREGATES:
            raise ConfigError(f"--aggregate: {self.aggregate!r} is not one of {', '.join(AGGREGATES)}")


@dataclass
class Scored:
    """Logits (N, C) per input (NaN rows: unusable), per-input errors, and per-window (start s, end s, logits)."""

    logits: np.ndarray
    errors: dict[int, str]
    windows: dict[int, list[tuple[float, float, np.ndarray]]]


class Detector:
    """A run's model (LoRA merged in memory, the run folder untouched) with its task, calibration and settings."""

    def __init__(self, run: str | Path, device: str = "cpu", merge: bool = True) -> None:
        """Load the best checkpoint of `run` (a run folder or checkpoint folder)."""
        self.checkpoint = checkpoint_of(run)
        self.exp, self.model, self.adapter, self.meta = load_trained(self.checkpoint, device)
        if merge:  # scoring at plain-model speed; the trained adapter stays as saved
            self.adapter.merge(self.model)
        self.device = device
        self.task = self.exp.task.build(seed=self.exp.seed)
        self.class_names = list(self.task.class_names)
        self.sample_rate = SAMPLE_RATE

    def score(self, waves: Sequence[np.ndarray], windows: Windows = Windows(), per_window: bool = False) -> Scored:
        """Score 16 kHz mono float waveforms; a wave the model cannot take gets a NaN row and an error."""
        options = scoring_options(self.exp.train)
        if windows.seconds is not None:
            options["chunk_samples"] = int(round(windows.seconds * SAMPLE_RATE))
        if windows.overlap is not None:
            options["chunk_overlap"] = windows.overlap
        arrays = [np.asarray(w, dtype=np.float32).reshape(-1) for w in waves]
        ids = [str(i) for i in range(len(arrays))]
        utts = Utterances(ids, np.zeros(len(arrays), dtype=np.int64), {}, lambda j: arrays[j], name="score",
                          on_error="skip")
        kept: dict[int, list[tuple[int, np.ndarray]]] | None = {} if per_window else None
        try:
            logits = utterance_logits(self.model, utts, device=self.device, progress=False,
                                      aggregate=windows.aggregate, windows=kept, **options)
        except FloatingPointError as exc:  # NaN for every input: each one's row says so
            logits = np.full((len(arrays), self.task.num_classes), np.nan)
            utts.errors.update({key: str(exc) for key in ids if key not in utts.errors})
        chunk = options["chunk_samples"]
        spans = {i: [(s / SAMPLE_RATE, min(s + (chunk or arrays[i].size), arrays[i].size) / SAMPLE_RATE, row)
                     for s, row in rows] for i, rows in (kept or {}).items()}
        return Scored(logits, {int(k): v for k, v in utts.errors.items()}, spans)

    def table(self, logits: np.ndarray, operating_point: dict[str, float] | None = None) -> tuple[list[str], list[list[str]]]:
        """The task's columns and rows for `logits` (e.g. score, LLR, decision), at `operating_point` if given."""
        if operating_point:
            return self.task.score_table(logits, self.meta, operating_point=operating_point)
        return self.task.score_table(logits, self.meta)

    def operating_point(self, requested: dict[str, float] | None = None) -> str:
        """The decision rule in words, as the output says it."""
        return self.task.operating_point(self.meta, requested)

    def describe(self) -> dict[str, Any]:
        """What a deployed model states about itself: classes, sample rate, calibration, default decision rule."""
        return {"sample_rate": self.sample_rate, "class_names": self.class_names,
                "calibration": self.meta.get("calibration"), "operating_point": self.operating_point(),
                "task": self.exp.task.name}


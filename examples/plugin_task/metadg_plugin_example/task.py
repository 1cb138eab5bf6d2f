"""`tone_pitch`: which pitch band (low, mid, high) a tone is in, across rooms; unseen rooms at evaluation.

Written against metadg's public task API only (`metadg.tasks`, `metadg.config`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from metadg.tasks import CorpusTask, CorpusTaskConfig, Headline, Utterances
from metadg_plugin_example.corpus import CLASSES


class TonePitchConfig(CorpusTaskConfig):
    """Train on tones in the source rooms, select on dev, evaluate on seen and unseen rooms.

    CorpusTaskConfig brings train/dev/eval corpus specs (validated against each corpus'
    own Config, errors naming the key), `domains` and `crop_samples`.
    """

    domain_key: str = Field("room", description="utterance attribute whose values are the DG domains")
    crop_samples: int = Field(4000, ge=400, description="training crop length in samples (repeat-padded when shorter)")
    selection_metric: Literal["accuracy", "error_rate"] = Field(
        "accuracy", description="dev metric that picks the checkpoint (accuracy is maximised, error_rate minimised)")


class TonePitch(CorpusTask):
    """Pitch band of synthetic tones across rooms; accuracy, error rate, accuracy per room."""

    Config = TonePitchConfig
    headline = (Headline("accuracy", "accuracy", "acc_%", scale=100.0, unit=" %", higher_is_better=True),)
    higher_is_better = frozenset({"accuracy"})  # also covers "accuracy/<room>"; error_rate is minimised

    def __init__(self, cfg: TonePitchConfig, *, seed: int = 0) -> None:
        super().__init__(cfg, seed=seed)  # cheap: no data is read here
        self.cfg: TonePitchConfig = cfg

    # ------------------------------------------------------------ data

    @property
    def class_names(self) -> tuple[str, ...]:
        """low, mid, high."""
        return CLASSES

    # train_set, dev_set and eval_sets come from CorpusTask: each spec is read through
    # label_map(), which by default maps a label string to its index in class_names.

    # ------------------------------------------------------------ metrics

    @property
    def selection_metric(self) -> str:
        """The configured dev metric."""
        return self.cfg.selection_metric

    def metrics(self, logits: np.ndarray, utts: Utterances, calibration: dict[str, Any] | None = None) -> dict[str, float]:
        """accuracy, error_rate and accuracy/<room> over the scored rows (NaN rows were skipped: left out)."""
        logits = np.asarray(logits, dtype=np.float64)
        scored = np.isfinite(logits).all(axis=1) if logits.size else np.zeros(len(utts), dtype=bool)
        labels = utts.labels[scored]
        correct = (logits[scored].argmax(axis=1) == labels) if labels.size else np.zeros(0, dtype=bool)
        accuracy = float(correct.mean()) if correct.size else float("nan")
        out = {"accuracy": accuracy, "error_rate": 1.0 - accuracy}
        domains = np.asarray(utts.attrs.get(self.domain_key, [""] * len(utts)), dtype=object)[scored]
        for room in sorted(set(domains) - {""}):
            out[f"accuracy/{room}"] = float(correct[domains == room].mean())
        return out

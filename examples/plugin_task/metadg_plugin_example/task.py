"""`tone_pitch`: which pitch band (low, mid, high) a tone is in, across rooms; unseen rooms at evaluation.

Written against metadg's public task API only (`metadg.tasks`, `metadg.config`).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError, StrictModel
from metadg.tasks import CorpusError, Headline, Task, Utterances, corpus_spec, read_corpus
from metadg_plugin_example.corpus import CLASSES


class TonePitchConfig(StrictModel):
    """Train on tones in the source rooms, select on dev, evaluate on seen and unseen rooms."""

    train: dict[str, Any] = Field(description="corpus spec {name: ..., ...} of the source rooms")
    dev: dict[str, Any] = Field(description="corpus spec for model selection (source rooms, held-out clips)")
    eval: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named corpus specs to evaluate on")
    domain_key: str = Field("room", description="utterance attribute whose values are the DG domains")
    crop_samples: int = Field(4000, ge=400, description="training crop length in samples (repeat-padded when shorter)")
    selection_metric: Literal["accuracy", "error_rate"] = Field(
        "accuracy", description="dev metric that picks the checkpoint (accuracy is maximised, error_rate minimised)")

    # corpus_spec validates a spec against the named corpus' own Config (errors name the key).
    @field_validator("train", "dev", mode="before")
    @classmethod
    def _check_corpus(cls, value: Any, info: Any) -> dict[str, Any]:
        return corpus_spec(value, info.field_name)

    @field_validator("eval", mode="before")
    @classmethod
    def _check_eval(cls, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of set name → corpus spec")
        return {str(k): corpus_spec(v, f"eval.{k}") for k, v in value.items()}


class TonePitch(Task):
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

    @property
    def domain_key(self) -> str:
        """The attribute whose values are the domains (rooms)."""
        return self.cfg.domain_key

    @property
    def crop_samples(self) -> int:
        """Training crop length in samples."""
        return self.cfg.crop_samples

    def label_index(self, label: str | int) -> int:
        """The label map handed to corpora: class name → index (an int must already be one)."""
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < self.num_classes:
            return int(label)
        if label in self.class_names:
            return self.class_names.index(label)
        raise CorpusError(f"unknown label {label!r} (valid: {', '.join(self.class_names)})")

    def _read(self, spec: dict[str, Any], where: str) -> Utterances:
        utts = read_corpus(spec, where, self.label_index)
        if self.domain_key not in utts.attrs:
            raise ConfigError(f"task.domain_key: {where} has no attribute {self.domain_key!r} "
                              f"(have: {', '.join(sorted(utts.attrs))})")
        return utts

    @cached_property
    def _train(self) -> Utterances:
        return self._read(self.cfg.train, "task.train")

    def train_set(self) -> Utterances:
        """Clips of the source rooms."""
        return self._train

    def dev_set(self) -> Utterances:
        """Held-out clips of the source rooms."""
        return self._read(self.cfg.dev, "task.dev")

    def eval_sets(self) -> dict[str, Utterances]:
        """The named evaluation sets, in config order."""
        return {name: self._read(spec, f"task.eval.{name}") for name, spec in self.cfg.eval.items()}

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

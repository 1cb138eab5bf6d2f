"""The `audio_classification` task: multi-class labels, domains = any utterance attribute (device by default)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError
from metadg.registry import TASKS
from metadg.tasks.audio.corpus import corpus_classes
from metadg.tasks.audio.corpus_task import CorpusTask, CorpusTaskConfig
from metadg.tasks.base import Headline, Utterances
from metadg.tasks.classification.metrics import classification_metrics, confusion
from metadg.tasks.classification.plots import confusion_plot


class AudioClassificationConfig(CorpusTaskConfig):
    """Train on source domains (e.g. recording devices), select on dev, evaluate on unseen domains."""

    classes: list[str] | None = Field(
        None, description="class names in label order; default: the classes the train corpus names (sorted for a list)")
    domain_key: str = Field("device", description="utterance attribute whose values are the DG domains")
    selection_metric: Literal["accuracy", "macro_accuracy", "macro_f1", "log_loss"] = Field(
        "accuracy", description="dev metric that picks the checkpoint (log_loss is minimised, the others maximised)")

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError(f"needs two or more distinct class names, got {value}")
        return value


@TASKS.register("audio_classification")
class AudioClassification(CorpusTask):
    """Multi-class audio classification across domains; accuracy, macro-F1, log loss, per-domain accuracy."""

    Config = AudioClassificationConfig
    headline = (
        Headline("accuracy", "accuracy", "acc_%", scale=100.0, unit=" %", higher_is_better=True),
        Headline("log_loss", "log loss", "logloss"),
    )
    higher_is_better = frozenset({"accuracy", "macro_accuracy", "macro_f1"})

    def __init__(self, cfg: AudioClassificationConfig, *, seed: int = 0) -> None:
        super().__init__(cfg, seed=seed)
        self.cfg: AudioClassificationConfig = cfg

    @cached_property
    def class_names(self) -> tuple[str, ...]:
        """The configured classes, else the train corpus's."""
        if self.cfg.classes is not None:
            return tuple(self.cfg.classes)
        found = corpus_classes(self.cfg.train, "task.train")
        if not found or len(found) < 2:
            raise ConfigError(f"task.classes: the train corpus {self.cfg.train['name']!r} does not name two or more "
                              f"classes (found {found}); list them in task.classes")
        return tuple(found)

    @property
    def selection_metric(self) -> str:
        """The configured dev metric."""
        return self.cfg.selection_metric

    def metrics(self, logits: np.ndarray, utts: Utterances, calibration: dict[str, Any] | None = None) -> dict[str, float]:
        """accuracy, macro_accuracy, macro_f1, log_loss, accuracy per domain and per class."""
        domains = utts.attrs.get(self.domain_key)
        return classification_metrics(logits, utts.labels, domains, self.class_names)

    def write_summary(self, directory: Path, scored: dict[str, tuple[Utterances, np.ndarray]]) -> list[Path]:
        """confusion_<set>.png per evaluated set."""
        paths = []
        for name, (utts, logits) in scored.items():
            ok = np.isfinite(logits).all(axis=1)
            matrix = confusion(utts.labels[ok], logits[ok].argmax(axis=1), self.num_classes)
            acc = np.trace(matrix) / max(1, matrix.sum())
            paths.append(confusion_plot(matrix, self.class_names, directory / f"confusion_{name}.png",
                                        f"{name}: accuracy {100 * acc:.1f} %"))
        return paths

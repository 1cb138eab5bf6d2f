"""The `audio_classification` task: multi-class labels, domains = any utterance attribute (device by default)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError, StrictModel
from metadg.registry import TASKS, unknown_name_message
from metadg.tasks.audio.corpus import corpus_classes, corpus_spec, read_corpus
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tasks.base import Headline, Task, Utterances
from metadg.tasks.classification.metrics import classification_metrics, confusion
from metadg.tasks.classification.plots import confusion_plot


class AudioClassificationConfig(StrictModel):
    """Train on source domains (e.g. recording devices), select on dev, evaluate on unseen domains."""

    train: dict[str, Any] = Field(description="corpus spec {name: ..., ...} of the source domains")
    dev: dict[str, Any] = Field(description="corpus spec for model selection (source domains, held-out utterances)")
    eval: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named corpus specs to evaluate on")
    classes: list[str] | None = Field(
        None, description="class names in label order; default: the classes the train corpus names (sorted for a list)")
    domain_key: str = Field("device", description="utterance attribute whose values are the DG domains")
    domains: list[str] | None = Field(None, description="source domains to train on; default: all in train")
    crop_samples: int = Field(16000, ge=400, description="training crop length (repeat-padded when shorter)")
    selection_metric: Literal["accuracy", "macro_accuracy", "macro_f1", "log_loss"] = Field(
        "accuracy", description="dev metric that picks the checkpoint (log_loss is minimised, the others maximised)")

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

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (len(value) < 2 or len(set(value)) != len(value)):
            raise ValueError(f"needs two or more distinct class names, got {value}")
        return value


@TASKS.register("audio_classification")
class AudioClassification(Task):
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
    def domain_key(self) -> str:
        """Attribute whose values are the domains."""
        return self.cfg.domain_key

    @property
    def crop_samples(self) -> int:
        """Training crop length in samples."""
        return self.cfg.crop_samples

    @property
    def selection_metric(self) -> str:
        """The configured dev metric."""
        return self.cfg.selection_metric

    def label_index(self, label: str | int) -> int:
        """Class index of a label string (an int must already be one)."""
        if isinstance(label, (int, np.integer)) and 0 <= int(label) < self.num_classes:
            return int(label)
        if label in self.class_names:
            return self.class_names.index(label)
        raise CorpusError(unknown_name_message("label", label, list(self.class_names)))

    def _read(self, spec: dict[str, Any], where: str) -> Utterances:
        return read_corpus(spec, where, self.label_index)

    @cached_property
    def _train(self) -> Utterances:
        utts = self._read(self.cfg.train, "task.train")
        if self.domain_key not in utts.attrs:
            raise ConfigError(f"task.domain_key: {unknown_name_message('attribute', self.domain_key, sorted(utts.attrs))}")
        if self.cfg.domains is not None:
            values = utts.attr(self.domain_key)
            missing = sorted(set(self.cfg.domains) - set(values))
            if missing:
                raise ConfigError(f"task.domains: {missing} not in the training data (present: {', '.join(sorted(set(values)))})")
            wanted = set(self.cfg.domains)
            utts = utts.subset([i for i, v in enumerate(values) if v in wanted])
        return utts

    def train_set(self) -> Utterances:
        """Training utterances (restricted to `domains` when given)."""
        return self._train

    def dev_set(self) -> Utterances:
        """Model-selection utterances."""
        return self._read(self.cfg.dev, "task.dev")

    def eval_sets(self) -> dict[str, Utterances]:
        """Named evaluation sets, read in config order."""
        return {name: self._read(spec, f"task.eval.{name}") for name, spec in self.cfg.eval.items()}

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

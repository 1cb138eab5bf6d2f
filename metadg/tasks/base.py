"""The Task contract: a DG problem decides its data, classes, domains, sampling, metrics, selection and outputs.

The engine moves utterances and (N, C) logits and asks the task everything that
depends on what a class means. A task's `__init__` must be cheap (no data read):
the CLI and the benchmark build tasks only to ask for names and directions.
"""

from __future__ import annotations

import csv
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel

from metadg.config import ConfigError
from metadg.engine.batch import Batch
from metadg.engine.sampling import ClassBalanced, Partition, SamplingPolicy
from metadg.engine.utterances import LoadError, Utterances, fit_length

__all__ = ["Batch", "Headline", "LoadError", "Task", "Utterances", "fit_length", "softmax"]

Direction = Literal["min", "max"]


@dataclass(frozen=True)
class Headline:
    """A metric the CLI prints and benchmark tables show, per evaluated set."""

    key: str  # key in the task's metrics dict, e.g. "eer"
    label: str  # printed name, e.g. "EER"
    column: str  # benchmark-table column suffix, e.g. "eer_%" → "dev_eer_%", "seen_eer_%"
    scale: float = 1.0  # shown value = scale × metric (100 for percentages)
    unit: str = ""  # printed after the value, e.g. " %"
    higher_is_better: bool = False

    def show(self, value: float) -> str:
        """'20.67 %'."""
        return f"{self.scale * value:.2f}{self.unit}"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits in float64 (NaN rows stay NaN)."""
    z = logits - np.nanmax(logits, axis=1, keepdims=True) if logits.size else logits
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Task(ABC):
    """A domain-generalization problem: source domains to train on, dev and eval sets, metrics, outputs."""

    Config: type[BaseModel]
    #: the metrics printed by `metadg run`/`eval` and tabulated by `metadg bench`
    headline: tuple[Headline, ...] = ()
    #: metric names (before any '/') for which a larger value is better
    higher_is_better: frozenset[str] = frozenset()

    def __init__(self, cfg: BaseModel, *, seed: int = 0) -> None:
        self.cfg = cfg
        self.seed = seed

    # ------------------------------------------------------------ data

    @property
    @abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """Name of each class; label i means class_names[i]."""

    @property
    def num_classes(self) -> int:
        """Number of classes: the width of the model's logits."""
        return len(self.class_names)

    @property
    @abstractmethod
    def domain_key(self) -> str:
        """Attribute whose values are the domains."""

    @abstractmethod
    def train_set(self) -> Utterances:
        """Training utterances of the source domains."""

    @abstractmethod
    def dev_set(self) -> Utterances:
        """Held-out utterances of the source domains for model selection."""

    @abstractmethod
    def eval_sets(self) -> dict[str, Utterances]:
        """Named evaluation sets (unseen domains, other corpora)."""

    @property
    @abstractmethod
    def crop_samples(self) -> int:
        """Training crop length in samples."""

    def partition(self, utts: Utterances) -> Partition:
        """The split of `utts` into domains; default: each utterance's `domain_key` value, nothing shared."""
        return Partition.by_attribute(utts.attr(self.domain_key), self.domain_key, utts.name or "utterances")

    def sampling_policy(self) -> SamplingPolicy:
        """What a step's per-domain batch is made of; default class-balanced per domain."""
        return ClassBalanced()

    def augmentation(self) -> Callable[[np.ndarray, np.random.Generator], np.ndarray] | None:
        """Applied to each training crop with the batcher's generator; None = no augmentation."""
        return None

    def batch_augmentation(self, device: torch.device) -> Callable[[torch.Tensor, Sequence[int]], torch.Tensor] | None:
        """Applied on `device` to each step's crops (B, T), one seed per crop; when given, `augmentation` is not used."""
        return None

    def class_index(self, name: str) -> int:
        """Index of a class name used in config (e.g. train.class_weights keys)."""
        if name not in self.class_names:
            raise ConfigError(f"train.class_weights: unknown class {name!r} (valid: {', '.join(self.class_names)})")
        return self.class_names.index(name)

    # ------------------------------------------------------------ metrics and selection

    @abstractmethod
    def metrics(self, logits: np.ndarray, utts: Utterances, calibration: dict[str, Any] | None = None) -> dict[str, float]:
        """Metrics of (N, C) `logits` on `utts` (NaN rows: skipped utterances); must include `selection_metric`."""

    @property
    @abstractmethod
    def selection_metric(self) -> str:
        """The dev metric that picks the best checkpoint."""

    def direction(self, metric: str) -> Direction:
        """'max' when a larger `metric` is better, else 'min' (per-domain keys 'accuracy/a' follow 'accuracy')."""
        return "max" if metric.split("/", 1)[0] in self.higher_is_better else "min"

    def fit_calibration(self, logits: np.ndarray, utts: Utterances) -> dict[str, Any] | None:
        """Calibration fitted on dev logits, saved in the checkpoint and handed to `metrics`; None = none."""
        return None

    # ------------------------------------------------------------ outputs

    def write_set(self, directory: Path, name: str, utts: Utterances, logits: np.ndarray,
                  calibration: dict[str, Any] | None = None) -> list[Path]:
        """Files written per evaluated set; default `<name>.csv`: utterance, label, prediction, logits."""
        path = directory / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(utts.attrs)
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["utt", "label", "predicted", *(f"logit_{c}" for c in self.class_names), *keys])
            for i, utt in enumerate(utts.ids):
                if not np.isfinite(logits[i]).all():  # skipped under on_error: skip: no prediction
                    continue
                writer.writerow([utt, self.class_names[utts.labels[i]], self.class_names[int(np.argmax(logits[i]))],
                                 *(f"{v:.6f}" for v in logits[i]), *(utts.attrs[k][i] for k in keys)])
        return [path]

    def write_summary(self, directory: Path, scored: dict[str, tuple[Utterances, np.ndarray]]) -> list[Path]:
        """Files over every evaluated set (plots), logged as artifacts; default none."""
        return []

    def operating_point(self, meta: dict[str, Any], requested: dict[str, float] | None = None) -> str:
        """How `score_table` decides, in words; `requested` ({threshold} or {prior, c_miss, c_fa}) picks another rule."""
        if requested:
            raise ConfigError(f"{type(self).__name__} decides by the most probable class; a threshold or prior "
                              "(--threshold, --prior) applies to two-class detection tasks")
        return "the most probable class"

    def score_table(self, logits: np.ndarray, meta: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """Columns and rows that `metadg score` writes per file; default: predicted class and probabilities."""
        probs = softmax(np.asarray(logits, dtype=np.float64))
        header = ["predicted", *(f"p_{c}" for c in self.class_names)]
        rows = [[self.class_names[int(np.argmax(p))], *(f"{v:.6f}" for v in p)] for p in probs]
        return header, rows

"""CorpusTask: the part of a task that reads its train, dev and eval sets from corpus specs."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError, StrictModel, plain_name
from metadg.registry import unknown_name_message
from metadg.tasks.audio.corpus import LabelMap, corpus_spec, read_corpus
from metadg.tasks.base import Task, Utterances


class CorpusTaskConfig(StrictModel):
    """Train on source domains of one corpus, select on dev, evaluate on any number of sets."""

    train: dict[str, Any] = Field(description="corpus spec {name: ..., split: ..., filters: ...} of the source domains")
    dev: dict[str, Any] = Field(description="corpus spec for model selection (source domains, held-out utterances)")
    eval: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named corpus specs to evaluate on")
    domain_key: str = Field("domain", description="utterance attribute whose values are the DG domains")
    domains: list[str] | None = Field(None, description="source domains to train on; default: all in train")
    crop_samples: int = Field(16000, ge=400, le=16000 * 600, description="training crop length (repeat-padded when "
                              "shorter); at most 10 min of 16 kHz audio, so a typo cannot allocate gigabytes per clip")

    @field_validator("train", "dev", mode="before")
    @classmethod
    def _check_corpus(cls, value: Any, info: Any) -> dict[str, Any]:
        return corpus_spec(value, info.field_name)

    @field_validator("eval", mode="before")
    @classmethod
    def _check_eval(cls, value: Any) -> dict[str, dict[str, Any]]:
        if not isinstance(value, dict):
            raise ValueError("expected a mapping of set name → corpus spec")
        # A set's name becomes its score files' names: one plain file name, never a path.
        return {plain_name(k, "eval"): corpus_spec(v, f"eval.{k}") for k, v in value.items()}


class CorpusTask(Task):
    """A Task whose sets are corpus specs in its config, read through the task's label map."""

    Config = CorpusTaskConfig

    def __init__(self, cfg: CorpusTaskConfig, *, seed: int = 0) -> None:
        super().__init__(cfg, seed=seed)
        self.cfg: CorpusTaskConfig = cfg

    def label_map(self) -> LabelMap:
        """Label text → class index for every corpus this task reads; default: an index into `class_names`."""
        from metadg.tasks.audio.file_corpus import CorpusError

        names = list(self.class_names)

        def index(label: str | int) -> int:
            if isinstance(label, (int, np.integer)) and 0 <= int(label) < len(names):
                return int(label)
            if label in names:
                return names.index(label)
            raise CorpusError(unknown_name_message("label", label, names))

        return index

    def domain_rows(self, utts: Utterances) -> np.ndarray:
        """Which utterances carry a domain of their own (`task.domains` restricts those; the others stay)."""
        return np.ones(len(utts), dtype=bool)

    @property
    def domain_key(self) -> str:
        """Attribute whose values are the domains."""
        return self.cfg.domain_key

    @property
    def crop_samples(self) -> int:
        """Training crop length in samples."""
        return self.cfg.crop_samples

    def read(self, spec: dict[str, Any], where: str) -> Utterances:
        """The utterances of one corpus spec of this task's config."""
        return read_corpus(spec, where, self.label_map())

    @cached_property
    def _train(self) -> Utterances:
        utts = self.read(self.cfg.train, "task.train")
        if self.domain_key not in utts.attrs:
            raise ConfigError(f"task.domain_key: {unknown_name_message('attribute', self.domain_key, sorted(utts.attrs))}")
        if self.cfg.domains is not None:
            values = np.asarray(utts.attr(self.domain_key), dtype=object)
            own = self.domain_rows(utts)
            present = sorted({str(v) for v in values[own]})
            missing = sorted(set(self.cfg.domains) - set(present))
            if missing:
                raise ConfigError(f"task.domains: {missing} not in the training data (present: {', '.join(present)})")
            wanted = np.isin(values, list(self.cfg.domains))
            utts = utts.subset(np.flatnonzero(~own | wanted))
        return utts

    def train_set(self) -> Utterances:
        """Training utterances (restricted to `domains` when given)."""
        return self._train

    def dev_set(self) -> Utterances:
        """Model-selection utterances."""
        return self.read(self.cfg.dev, "task.dev")

    def eval_sets(self) -> dict[str, Utterances]:
        """Named evaluation sets, read in config order."""
        return {name: self.read(spec, f"task.eval.{name}") for name, spec in self.cfg.eval.items()}

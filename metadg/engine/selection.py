"""Model selection: which data picks the best step. Training-domain validation, leave-one-domain-out, oracle.

Each method is a small class in the SELECTIONS registry (DomainBed's model-selection
classes); the metric and its direction are the task's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from metadg.config import ConfigError
from metadg.engine.sampling import Partition
from metadg.engine.utterances import Utterances
from metadg.registry import SELECTIONS

if TYPE_CHECKING:
    from metadg.tasks.base import Task


@dataclass
class Selection:
    """The training utterances (with their domain partition) and the validation utterances a method chose."""

    train: Utterances
    val: Utterances
    label: str
    partition: Partition

    @property
    def oracle(self) -> bool:
        """True when validation uses target data: results are not a fair DG estimate."""
        return self.label.startswith("oracle")


def _training(task: Task) -> tuple[Utterances, Partition]:
    train = task.train_set()
    return train, task.partition(train)


@SELECTIONS.register("training_domain")
class TrainingDomain:
    """The dev split of the source domains validates (DomainBed's training-domain validation)."""

    @staticmethod
    def select(cfg: Any, task: Task) -> Selection:
        """Train on every source domain, validate on the task's dev set."""
        train, partition = _training(task)
        return Selection(train, task.dev_set(), "training_domain", partition)


@SELECTIONS.register("oracle")
class Oracle:
    """An evaluation set validates: target data, so results are labelled oracle."""

    @staticmethod
    def select(cfg: Any, task: Task) -> Selection:
        """Validate on `eval_set` (default: the first evaluation set)."""
        sets = task.eval_sets()
        if not sets:
            raise ConfigError("train.selection.method: oracle needs at least one task.eval set")
        name = cfg.eval_set or next(iter(sets))
        if name not in sets:
            raise ConfigError(f"train.selection.eval_set: unknown set {name!r} (have: {', '.join(sets)})")
        train, partition = _training(task)
        return Selection(train, sets[name], f"oracle:{name}", partition)


@SELECTIONS.register("leave_one_domain_out")
class LeaveOneDomainOut:
    """One source domain is kept out of training; dev utterances of that domain (and shared ones) validate."""

    @staticmethod
    def select(cfg: Any, task: Task) -> Selection:
        """Hold out `domain` (default: the last, sorted) from training; validate on its dev utterances."""
        train, partition = _training(task)
        domains = partition.domains
        if len(domains) < 2:
            raise ConfigError(f"train.selection: leave_one_domain_out needs two or more training domains, have {domains}")
        held = cfg.domain or domains[-1]
        if held not in domains:
            raise ConfigError(f"train.selection.domain: {held!r} is not a training domain (have: {', '.join(domains)})")
        keep = np.flatnonzero(~partition.members(held))
        dev = task.dev_set()
        dev_partition = task.partition(dev)
        held_dev = dev_partition.members(held)
        if not held_dev.any():
            raise ConfigError(f"train.selection.domain: the dev set has no utterances of domain {held!r}")
        val = dev.subset(np.flatnonzero(held_dev | dev_partition.shared))
        return Selection(train.subset(keep), val, f"leave_one_domain_out:{held}", partition.subset(keep))


def select(cfg: Any, task: Task) -> Selection:
    """Apply the configured selection method to a task's splits."""
    return SELECTIONS.get(cfg.method).select(cfg, task)

"""Domain partition and sampling policy: which utterances a step's per-domain batches are drawn from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass
class Partition:
    """The task's split of training utterances into source domains.

    `domain[i]` is utterance i's domain (None: in no domain of its own); `shared[i]`
    marks utterances that belong to every domain (a pool all domains draw from).
    """

    domains: list[str]
    domain: np.ndarray  # object array of str | None, one per utterance
    shared: np.ndarray  # bool, one per utterance

    def members(self, name: str) -> np.ndarray:
        """Boolean mask of the utterances of domain `name` (its own, not the shared ones)."""
        return self.domain == name

    def subset(self, indices: np.ndarray) -> Partition:
        """The partition of `utts.subset(indices)`; domains left without members disappear."""
        domain, shared = self.domain[indices], self.shared[indices]
        present = {d for d in domain if d is not None}
        return Partition([d for d in self.domains if d in present], domain, shared)

    @staticmethod
    def by_attribute(values: list[str], key: str, name: str = "utterances") -> Partition:
        """Every utterance in the domain named by its attribute value; none shared."""
        domain = np.asarray(values, dtype=object)
        domains = sorted({str(v) for v in values})
        if not domains:
            raise ValueError(f"{name}: no '{key}' domains to train on")
        return Partition(domains, domain, np.zeros(len(values), dtype=bool))


@dataclass
class Draw:
    """One part of a domain's batch: `count` utterances drawn from `pool` (with probabilities `weights`, if any).

    A Draw object listed under several domains is one pool shared by them: an
    utterance found unusable leaves it for all of them at once.
    """

    pool: np.ndarray
    count: int
    what: str  # for messages, e.g. "class 'park' of domain 'a'"
    weights: np.ndarray | None = None

    def remove(self, index: int) -> None:
        """Drop utterance `index` from the pool (an unusable file), renormalising the weights."""
        keep = self.pool != index
        self.pool = self.pool[keep]
        if self.weights is not None:
            w = self.weights[keep]
            self.weights = w / w.sum() if w.size else w


class SamplingPolicy(ABC):
    """Decides what each source domain's batch of a step is made of."""

    @abstractmethod
    def draws(self, labels: np.ndarray, partition: Partition, batch_per_domain: int, name: str) -> dict[str, list[Draw]]:
        """Per domain, the Draws whose counts add up to `batch_per_domain`."""


class ClassBalanced(SamplingPolicy):
    """Each domain's batch holds every class of that domain equally often.

    With B utterances per domain and C classes in a domain, each class gets ⌊B / C⌋
    draws; the remaining B mod C are drawn from the whole domain with class-balanced
    probabilities, so every class is expected B / C times per step.
    """

    def draws(self, labels: np.ndarray, partition: Partition, batch_per_domain: int, name: str) -> dict[str, list[Draw]]:
        """Per-class draws plus one class-balanced remainder draw, per domain."""
        out: dict[str, list[Draw]] = {}
        for d in partition.domains:
            members = partition.members(d) | partition.shared
            classes = sorted({int(c) for c in labels[members]})
            base, extra = divmod(batch_per_domain, len(classes))
            draws = [Draw(np.flatnonzero(members & (labels == c)), base, f"class {c} of domain {d!r}")
                     for c in classes] if base else []
            if extra:
                pool = np.flatnonzero(members)
                per_class = {c: int((labels[pool] == c).sum()) for c in classes}
                weights = np.array([1.0 / (len(classes) * per_class[int(labels[i])]) for i in pool])
                draws.append(Draw(pool, extra, f"domain {d!r}", weights / weights.sum()))
            out[d] = draws
        return out

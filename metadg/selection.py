"""Model selection: which data picks the best step. Training-domain validation, leave-one-domain-out, oracle."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from metadg.config import ConfigError, SelectionConfig
from metadg.tasks.base import Task, Utterances

@dataclass
class Selection:
    """The training utterances and the validation utterances a method chose."""

    train: Utterances
    val: Utterances
    label: str

    @property
    def oracle(self) -> bool:
        """True when validation uses target data: results are not a fair DG estimate."""
        return self.label.startswith("oracle")


def _spoof_domains(utts: Utterances, key: str) -> list[str]:
    values = utts.attr(key)
    return sorted({v for v, y in zip(values, utts.labels) if y == 0})


def _without_spoof_domain(utts: Utterances, key: str, domain: str, keep: bool) -> Utterances:
    # keep=False: drop the domain's spoofs; keep=True: bona fide plus only that domain's spoofs.
    values = utts.attr(key)
    idx = [i for i, (v, y) in enumerate(zip(values, utts.labels)) if y == 1 or (v == domain) == keep]
    return utts.subset(np.asarray(idx, dtype=np.int64))


def select(cfg: SelectionConfig, task: Task) -> Selection:
    """Apply a selection method to a task's splits."""
    if cfg.method == "training_domain":
        return Selection(task.train_set(), task.dev_set(), "training_domain")
    if cfg.method == "oracle":
        sets = task.eval_sets()
        if not sets:
            raise ConfigError("train.selection.method: oracle needs at least one task.eval set")
        name = cfg.eval_set or next(iter(sets))
        if name not in sets:
            raise ConfigError(f"train.selection.eval_set: unknown set {name!r} (have: {', '.join(sets)})")
        return Selection(task.train_set(), sets[name], f"oracle:{name}")
    key = task.domain_key
    train, dev = task.train_set(), task.dev_set()
    domains = _spoof_domains(train, key)
    if len(domains) < 2:
        raise ConfigError(f"train.selection: leave_one_domain_out needs two or more training domains, have {domains}")
    held = cfg.domain or domains[-1]
    if held not in domains:
        raise ConfigError(f"train.selection.domain: {held!r} is not a training domain (have: {', '.join(domains)})")
    val = _without_spoof_domain(dev, key, held, keep=True)
    if not (val.labels == 0).any():
        raise ConfigError(f"train.selection.domain: the dev set has no spoofed utterances of domain {held!r}")
    return Selection(_without_spoof_domain(train, key, held, keep=False), val, f"leave_one_domain_out:{held}")

"""The spoof task's sampling policy: each domain's spoofs plus a share of one bona fide pool."""

from __future__ import annotations

import numpy as np

from metadg.engine.sampling import Draw, Partition, SamplingPolicy
from metadg.engine.utterances import Utterances


def partition_by_attack(utts: Utterances, domain_key: str = "attack", share_bonafide: bool = True) -> Partition:
    """Spoofs by their `domain_key` value (the attack); bona fide shared by every domain, or in its own value's."""
    values = np.asarray(utts.attr(domain_key), dtype=object)
    spoof = utts.labels == 0
    domains = sorted({str(v) for v in values[spoof]})
    if not domains:
        raise ValueError(f"{utts.name}: no spoof utterances, so no '{domain_key}' domains to train on")
    domain = np.where(spoof | (not share_bonafide), values, None)
    shared = ~spoof if share_bonafide else np.zeros(len(utts), dtype=bool)
    return Partition(domains, domain, shared)


class SharedBonafide(SamplingPolicy):
    """Per attack domain: `fraction` of the batch bona fide (from the shared pool, or the domain's own), the rest its spoofs.

    Bona fide speech is not what differs between attacks, so by default every domain
    draws it from one pool; the samples are flagged shared in the batch.
    """

    def __init__(self, bonafide_fraction: float) -> None:
        self.fraction = bonafide_fraction

    def draws(self, labels: np.ndarray, partition: Partition, batch_per_domain: int, name: str) -> dict[str, list[Draw]]:
        """[bona fide Draw, spoof Draw] per domain; the shared bona fide Draw is one object for all."""
        n_bona = min(batch_per_domain - 1, max(1, round(batch_per_domain * self.fraction)))
        n_spoof = batch_per_domain - n_bona
        bona = labels == 1
        shared = Draw(np.flatnonzero(bona & partition.shared), n_bona, "bona fide")
        out: dict[str, list[Draw]] = {}
        for d in partition.domains:
            own = partition.members(d)
            bona_draw = shared if partition.shared.any() else Draw(np.flatnonzero(bona & own), n_bona, f"bona fide of {d!r}")
            out[d] = [bona_draw, Draw(np.flatnonzero(~bona & own), n_spoof, f"spoof {d!r}")]
        empty = [d for d, (b, _) in out.items() if b.pool.size == 0]
        if empty:
            raise ValueError(f"{name}: no bona fide utterances for domain(s) {empty}")
        return out

"""DomainBatcher: one batch per source domain each step, loaded in-process or by worker processes."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from metadg.tasks.base import Batch, LoadError, Utterances, fit_length

log = logging.getLogger(__name__)

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
# One sample of a step: (domain, is_bona_fide, utterance index, sample seed).
Entry = tuple[str, bool, int, int]


class SampleMaker:
    """Loads, crops and augments one planned sample; picklable, so data-loader workers can run it."""

    def __init__(self, utts: Utterances, crop_samples: int, augment: Augment | None) -> None:
        self.utts, self.crop_samples, self.augment = utts, crop_samples, augment

    def __call__(self, entry: Entry) -> np.ndarray | str:
        """The crop, or the reason the file is unusable under on_error: skip."""
        # Each sample has its own generator, seeded by the plan: crops and
        # augmentation are the same whichever process makes them, in any order.
        rng = np.random.default_rng(entry[3])
        try:
            wave = self.utts.load(entry[2])
        except LoadError as exc:
            if self.utts.on_error != "skip":
                raise
            return exc.reason  # counted by the main process: a worker's counters are lost
        crop = fit_length(wave, self.crop_samples, rng)
        return self.augment(crop, rng) if self.augment is not None else crop

    def __getitem__(self, entry: Entry) -> tuple[Entry, np.ndarray | str]:
        return entry, self(entry)


class DomainBatcher:
    """Draws one batch per source domain each step; bona fide comes from a shared pool by default.

    Under data parallelism (`world_size` ranks) `batch_per_domain` is per rank:
    step k's global plan of `world_size` × the per-rank bona fide and spoof
    counts is drawn once from (seed, k), alike on every rank, and rank r keeps
    entries r, r + world_size, ... of each domain's bona fide and of its spoofs. The mean of the
    ranks' losses is then the loss of the global batch.
    """

    def __init__(
        self,
        utts: Utterances,
        *,
        domain_key: str,
        batch_per_domain: int,
        bonafide_fraction: float,
        crop_samples: int,
        share_bonafide: bool = True,
        augment: Augment | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.utts = utts
        self.rank, self.world_size = rank, world_size
        self.maker = SampleMaker(utts, crop_samples, augment)
        self.n_bona = min(batch_per_domain - 1, max(1, round(batch_per_domain * bonafide_fraction)))
        self.n_spoof = batch_per_domain - self.n_bona
        values = np.asarray(utts.attr(domain_key), dtype=object)
        spoof = utts.labels == 0
        self.domains = sorted({str(v) for v in values[spoof]})
        if not self.domains:
            raise ValueError(f"{utts.name}: no spoof utterances, so no '{domain_key}' domains to train on")
        self.spoof_pools = {d: np.flatnonzero(spoof & (values == d)) for d in self.domains}
        bona = utts.labels == 1
        if share_bonafide:
            pool = np.flatnonzero(bona)
            self.bona_pools = {d: pool for d in self.domains}
        else:
            self.bona_pools = {d: np.flatnonzero(bona & (values == d)) for d in self.domains}
        empty = [d for d, p in self.bona_pools.items() if p.size == 0]
        if empty:
            raise ValueError(f"{utts.name}: no bona fide utterances for domain(s) {empty}")
        self.seed = seed
        self.consumed = 0  # steps assembled so far: the sampler position a resumed run restarts from
        self.removed: set[int] = set()

    def plan(self, index: int | None = None) -> list[Entry]:
        """This rank's samples of step `index` (default: the next one): per domain, bona fide first, then its spoofs."""
        # Each step has its own generator, seeded by (seed, step): a plan does not
        # depend on how far a data loader prefetched, and resuming needs only the step.
        rng = np.random.default_rng([self.seed, self.consumed if index is None else index])
        entries: list[Entry] = []
        mine = slice(self.rank, None, self.world_size)
        for d in self.domains:
            for bona, pool, n in ((True, self.bona_pools[d], self.n_bona), (False, self.spoof_pools[d], self.n_spoof)):
                total = n * self.world_size
                drawn = [(d, bona, int(i), int(rng.integers(2**63))) for i in rng.choice(pool, size=total, replace=pool.size < total)]
                entries += drawn[mine]
        return entries

    def assemble(self, made: list[tuple[Entry, np.ndarray | str]]) -> dict[str, Batch]:
        """{domain: Batch} from made samples; an unusable one is counted and replaced here, in the main process."""
        crops: dict[str, list[np.ndarray]] = {d: [] for d in self.domains}
        labels: dict[str, list[int]] = {d: [] for d in self.domains}
        for entry, crop in made:
            while isinstance(crop, str):
                if not self.utts.skipped:
                    log.warning("%s: skipping unusable audio (on_error: skip): %s", self.utts.name, crop)
                self.utts.skipped[crop] += 1
                entry = self._replace(entry)
                crop = self.maker(entry)
            crops[entry[0]].append(crop)
            labels[entry[0]].append(int(self.utts.labels[entry[2]]))
        self.consumed += 1
        return {d: Batch(torch.from_numpy(np.stack(crops[d])), torch.tensor(labels[d])) for d in self.domains}

    def next(self) -> dict[str, Batch]:
        """One step's batches, loaded in this process."""
        return self.assemble([(e, self.maker(e)) for e in self.plan()])

    def iterate(self, num_workers: int) -> Iterator[dict[str, Batch]]:
        """Endless steps, with samples loaded by `num_workers` worker processes (plans stay in this process)."""
        if num_workers <= 0:
            while True:
                yield self.next()
        # An own generator: by default the loader would draw its worker seed from
        # torch's global RNG and shift every later dropout mask of the run.
        loader = DataLoader(
            self.maker, batch_sampler=_Plans(self), num_workers=num_workers, collate_fn=list,
            persistent_workers=True, generator=torch.Generator().manual_seed(0), worker_init_fn=_ignore_sigint,
        )
        for made in loader:
            yield self.assemble(made)

    def _replace(self, entry: Entry) -> Entry:
        # Under on_error: skip an unusable file leaves its pool for good and a
        # replacement is drawn from the same pool (under raise, try_load raised).
        domain, bona, index, _ = entry
        pools = self.bona_pools if bona else self.spoof_pools
        bad = pools[domain]
        self.removed.add(index)
        kept = bad[bad != index]
        for d, pool in pools.items():
            if pool is bad:  # a shared bona fide pool is one object: update it everywhere
                pools[d] = kept
        if kept.size == 0:
            kind = "bona fide" if bona else f"spoof {domain!r}"
            raise ValueError(f"{self.utts.name}: every {kind} utterance is unusable ({dict(self.utts.skipped)})")
        rng = np.random.default_rng([entry[3], index])  # a replacement is a function of what it replaces
        return domain, bona, int(rng.choice(kept)), int(rng.integers(2**63))

    def state_dict(self) -> dict[str, Any]:
        """Sampler position: steps consumed and the files found unusable so far."""
        return {"consumed": self.consumed, "removed": sorted(self.removed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (before `iterate` starts)."""
        self.consumed = int(state["consumed"])
        for index in state["removed"]:
            for pools in (self.bona_pools, self.spoof_pools):
                for d, pool in pools.items():
                    pools[d] = pool[pool != index]
        self.removed = set(state["removed"])


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: workers must keep loading so the
    # main process can finish its step and save state before stopping.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Plans:
    # The DataLoader's batch sampler: each "batch" is one step's plan.
    def __init__(self, batcher: DomainBatcher) -> None:
        self.batcher = batcher

    def __iter__(self) -> Iterator[list[Entry]]:
        index = self.batcher.consumed
        while True:
            yield self.batcher.plan(index)
            index += 1

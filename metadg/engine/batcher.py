"""DomainBatcher: one batch per source domain each step, loaded in-process or by worker processes."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from metadg.engine.batch import Batch
from metadg.engine.sampling import ClassBalanced, Draw, Partition, SamplingPolicy
from metadg.engine.utterances import LoadError, Utterances, fit_length

log = logging.getLogger(__name__)

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
#: a whole step's crops (B, T) on the training device and one seed per crop → augmented crops, same shape
BatchAugment = Callable[[torch.Tensor, Sequence[int]], torch.Tensor]
# One sample of a step: (domain, index of its Draw in the domain's list, utterance index, sample seed).
Entry = tuple[str, int, int, int]


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
    """Draws one batch per source domain each step, as the task's partition and sampling policy say.

    Under data parallelism (`world_size` ranks) `batch_per_domain` is per rank:
    step k's global plan of `world_size` × each Draw's count is drawn once from
    (seed, k), alike on every rank, and rank r keeps entries r, r + world_size, ...
    of each Draw. The mean of the ranks' losses is then the loss of the global batch.
    """

    def __init__(
        self,
        utts: Utterances,
        *,
        partition: Partition,
        batch_per_domain: int,
        crop_samples: int,
        policy: SamplingPolicy | None = None,
        augment: Augment | None = None,
        batch_augment: BatchAugment | None = None,
        device: torch.device | str = "cpu",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if augment is not None and batch_augment is not None:
            raise ValueError("give augment (per clip, in the loader) or batch_augment (per step, on the device), not both")
        self.utts = utts
        self.batch_augment, self.device = batch_augment, torch.device(device)
        self.partition = partition
        self.rank, self.world_size = rank, world_size
        self.maker = SampleMaker(utts, crop_samples, augment)
        self.domains = list(partition.domains)
        if not self.domains:
            raise ValueError(f"{utts.name}: no domains to train on")
        policy = policy if policy is not None else ClassBalanced()
        self.draws: dict[str, list[Draw]] = policy.draws(utts.labels, partition, batch_per_domain, utts.name)
        empty = sorted({draw.what for d in self.domains for draw in self.draws[d] if draw.pool.size == 0})
        if empty:
            raise ValueError(f"{utts.name}: no utterances to draw for {', '.join(empty)}")
        self.seed = seed
        self.consumed = 0  # steps assembled so far: the sampler position a resumed run restarts from
        self.removed: set[int] = set()

    def plan(self, index: int | None = None) -> list[Entry]:
        """This rank's samples of step `index` (default: the next one): per domain, its Draws in order."""
        # Each step has its own generator, seeded by (seed, step): a plan does not
        # depend on how far a data loader prefetched, and resuming needs only the step.
        rng = np.random.default_rng([self.seed, self.consumed if index is None else index])
        entries: list[Entry] = []
        mine = slice(self.rank, None, self.world_size)
        for d in self.domains:
            for k, draw in enumerate(self.draws[d]):
                total = draw.count * self.world_size
                picked = rng.choice(draw.pool, size=total, replace=draw.pool.size < total, p=draw.weights)
                drawn = [(d, k, int(i), int(rng.integers(2**63))) for i in picked]
                entries += drawn[mine]
        return entries

    def assemble(self, made: list[tuple[Entry, np.ndarray | str]]) -> dict[str, Batch]:
        """{domain: Batch} from made samples; an unusable one is counted and replaced here, in the main process."""
        crops: dict[str, list[np.ndarray]] = {d: [] for d in self.domains}
        labels: dict[str, list[int]] = {d: [] for d in self.domains}
        index: dict[str, list[int]] = {d: [] for d in self.domains}
        seeds: dict[str, list[int]] = {d: [] for d in self.domains}
        for entry, crop in made:
            while isinstance(crop, str):
                if not self.utts.skipped:
                    log.warning("%s: skipping unusable audio (on_error: skip): %s", self.utts.name, crop)
                self.utts.skipped[crop] += 1
                entry = self._replace(entry)
                crop = self.maker(entry)
            crops[entry[0]].append(crop)
            labels[entry[0]].append(int(self.utts.labels[entry[2]]))
            index[entry[0]].append(entry[2])
            seeds[entry[0]].append(entry[3])
        self.consumed += 1
        shared = {d: torch.from_numpy(self.partition.shared[index[d]]) for d in self.domains}
        inputs = {d: torch.from_numpy(np.stack(crops[d])) for d in self.domains}
        if self.batch_augment is not None:
            inputs = self._augment_on_device(inputs, seeds)
        return {d: Batch(inputs[d], torch.tensor(labels[d]), None, shared[d]) for d in self.domains}

    def _augment_on_device(self, inputs: dict[str, torch.Tensor], seeds: dict[str, list[int]]) -> dict[str, torch.Tensor]:
        # One call for the whole step: a GPU gets one large batch, not one per domain. Each
        # crop's augmentation seed is a function of its sample seed alone, and distinct from
        # the stream its crop position came from.
        whole = torch.cat([inputs[d] for d in self.domains]).to(self.device, non_blocking=True)
        derived = [int(np.random.SeedSequence([s, 1]).generate_state(1, np.uint64)[0] >> 1)
                   for d in self.domains for s in seeds[d]]
        out = self.batch_augment(whole, derived)
        return dict(zip(self.domains, out.split([len(inputs[d]) for d in self.domains])))

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
        # Under on_error: skip an unusable file leaves every pool for good and a
        # replacement is drawn from the same Draw (under raise, the loader raised).
        domain, part, index, _ = entry
        draw = self.draws[domain][part]
        self._remove(index)
        if draw.pool.size == 0:
            raise ValueError(f"{self.utts.name}: every {draw.what} utterance is unusable ({dict(self.utts.skipped)})")
        rng = np.random.default_rng([entry[3], index])  # a replacement is a function of what it replaces
        return domain, part, int(rng.choice(draw.pool, p=draw.weights)), int(rng.integers(2**63))

    def _remove(self, index: int) -> None:
        self.removed.add(index)
        for draw in {id(x): x for d in self.domains for x in self.draws[d]}.values():  # shared Draws once
            draw.remove(index)

    def state_dict(self) -> dict[str, Any]:
        """Sampler position: steps consumed and the files found unusable so far."""
        return {"consumed": self.consumed, "removed": sorted(self.removed)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved position (before `iterate` starts)."""
        self.consumed = int(state["consumed"])
        for index in state["removed"]:
            self._remove(int(index))


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

"""`train.num_workers: auto`: measure in-process loading against the model step, then start the workers that keep up."""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from metadg.engine.batch import Batch
    from metadg.engine.batcher import DomainBatcher

log = logging.getLogger(__name__)

#: in-process loading costing at most this share of the model step is left in-process (workers cost memory)
IN_PROCESS_SHARE = 0.05
#: workers are sized for this many times the measured loading time (files vary, the machine is shared)
HEADROOM = 1.5


def usable_cpus() -> int:
    """CPUs this process may run on, shared among the ranks of this machine under torchrun."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def choose_workers(load_s: float, model_s: float, cpus: int) -> int:
    """Worker processes that load a step in the time the model takes for one (0: loading in-process is cheap enough)."""
    if cpus <= 1 or load_s <= IN_PROCESS_SHARE * model_s:
        return 0
    # One CPU stays with the main process, which runs the model step and assembles batches.
    need = HEADROOM * load_s / max(model_s, 1e-6)
    return max(1, min(cpus - 1, math.ceil(need - 1e-9)))  # 3.0000000000000004 workers are 3


class AutoWorkers:
    """Steps of `batcher`: the first `probe` loaded in-process and timed, the rest by the chosen number of workers.

    The samples of a step depend only on its plan, so the choice never changes what is trained on.
    """

    def __init__(self, batcher: DomainBatcher, probe: int = 4, cpus: int | None = None) -> None:
        self.batcher, self.probe = batcher, probe
        self.cpus = usable_cpus() if cpus is None else cpus
        self.chosen: int | None = None
        self._loads: list[float] = []
        self._models: list[float] = []  # time between handing out a step and being asked for the next
        self._returned: float | None = None
        self._workers: Iterator[dict[str, Batch]] | None = None

    def __iter__(self) -> AutoWorkers:
        return self

    def __next__(self) -> dict[str, Batch]:
        if self._workers is not None:
            return next(self._workers)
        if self.chosen is not None:  # decided to stay in-process
            return self.batcher.next()
        start = time.perf_counter()
        if self._returned is not None:
            self._models.append(start - self._returned)
        batches = self.batcher.next()
        self._loads.append(time.perf_counter() - start)
        if len(self._models) >= self.probe:
            self._decide()
        self._returned = time.perf_counter()
        return batches

    def _decide(self) -> None:
        # Medians: the first step's warm-up and an evaluation between steps must not count.
        load, model = statistics.median(self._loads), statistics.median(self._models)
        self.chosen = choose_workers(load, model, self.cpus)
        log.info("train.num_workers auto: %d worker(s) (in-process loading %.0f ms per draw, model %.0f ms, %d CPUs)",
                 self.chosen, 1e3 * load, 1e3 * model, self.cpus)
        if self.chosen:
            self._workers = self.batcher.iterate(self.chosen)

    def close(self) -> None:
        """Stop the workers, if any were started."""
        if self._workers is not None:
            self._workers.close()  # type: ignore[attr-defined]

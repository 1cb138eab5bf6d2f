"""Run a function on two gloo ranks on CPU and collect rank 0's result (for data-parallel equivalence tests)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metadg.engine.batch import Batch


def _main(rank: int, store: str, queue: Any, work: Callable[[int], Any]) -> None:
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    out = work(rank)
    dist.destroy_process_group()
    if rank == 0:
        queue.put(out)


def run_two_ranks(work: Callable[[int], Any]) -> Any:
    """`work(rank)` in 2 spawned processes in float64; rank 0's return value (plain arrays: no shared memory)."""
    queue = mp.get_context("spawn").Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = mp.spawn(_main, args=(os.path.join(tmp, "store"), queue, work), nprocs=2, join=False)
        deadline = time.monotonic() + 300
        while True:
            try:
                got = queue.get(timeout=1)
                break
            except Empty:
                # A rank that raised is reported with its traceback here, not as a queue timeout.
                procs.join(timeout=0)
                if time.monotonic() > deadline:
                    raise TimeoutError("two-rank run: no result from rank 0 after 300 s") from None
        while not procs.join():
            pass
    return got


def rank_half(batches: dict[str, Batch], rank: int) -> dict[str, Batch]:
    """This rank's contiguous half of every domain's global batch."""
    out = {}
    for d, b in batches.items():
        h = len(b) // 2
        out[d] = Batch(b.inputs[h * rank:h * rank + h], b.labels[h * rank:h * rank + h])
    return out

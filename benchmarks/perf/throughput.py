#!/usr/bin/env python
"""Training throughput with the real data path (FLAC decode, crop, RawBoost, DomainBatcher workers) vs the model step alone."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import CROP, clips, read_corpus  # noqa: E402
from step_time import build, make_algo, quartiles, train_step, trainable  # noqa: E402

from metadg.config import TrainConfig  # noqa: E402
from metadg.engine.batch import Batch  # noqa: E402
from metadg.engine.batcher import DomainBatcher  # noqa: E402
from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack  # noqa: E402
from metadg.tasks.spoof.task import SpoofDetectionConfig  # noqa: E402
from metadg.tasks.spoof.rawboost import RawBoost  # noqa: E402

DOMAINS = ("A01", "A02", "A03", "A04")
TARGET = 3.0  # loader clips/s ÷ model clips/s (issue 6)
DEFAULT_WORKERS = TrainConfig.model_fields["num_workers"].default
BATCH_PER_DOMAIN = TrainConfig.model_fields["batch_per_domain"].default
BONA_FRACTION = SpoofDetectionConfig.model_fields["bonafide_fraction"].default


def write_corpus(folder: Path, n_clips: int) -> Any:
    """`n_clips` 3.5–4.5 s 16 kHz FLAC files (every 5th bona fide, the rest spread over DOMAINS), indexed by the list reader."""
    import soundfile as sf

    (folder / "flac").mkdir(parents=True)
    lines = ["path,label,attack"]
    for k, wave in enumerate(clips(np.random.default_rng(0), 16000, n_clips)):
        sf.write(folder / "flac" / f"c{k:04d}.flac", wave, 16000, subtype="PCM_16", format="FLAC")
        bona = k % 5 == 0
        lines.append(f"flac/c{k:04d}.flac,{'bonafide' if bona else 'spoof'},{'-' if bona else DOMAINS[k % len(DOMAINS)]}")
    (folder / "list.csv").write_text("\n".join(lines) + "\n")
    return read_corpus("list", path=str(folder / "list.csv"), check_files=True)


def make_batcher(utts: Any, per_domain: int) -> DomainBatcher:
    """The training sampler as the Trainer builds it: crop to 64,600 samples, RawBoost algo 5."""
    return DomainBatcher(utts, partition=partition_by_attack(utts), policy=SharedBonafide(BONA_FRACTION), batch_per_domain=per_domain,
                         crop_samples=CROP, augment=RawBoost(5), seed=0)


def rate(make_iter: Callable[[], Iterator[Any]], step: Callable[[Any], None], warm: int, steps: int, clips_per: int) -> float:
    """Clips/s over `steps` steps after `warm` untimed ones, on a fresh iterator that is closed afterwards."""
    # A fresh, closed iterator per block: live workers would keep prefetching during the other
    # blocks, stealing their CPU and handing this block batches made in someone else's time.
    it = make_iter()
    try:
        for _ in range(warm):
            step(next(it))
        t0 = time.perf_counter()
        for _ in range(steps):
            step(next(it))
        return steps * clips_per / (time.perf_counter() - t0)
    finally:
        close = getattr(it, "close", None)
        if close:
            close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Round-robin blocks: loader alone and loader + model step for each worker count, and the model step alone."""
    with tempfile.TemporaryDirectory(prefix="metadg-throughput-") as tmp:
        utts = write_corpus(Path(tmp), args.clips)
        batcher = make_batcher(utts, args.per_domain)
        clips_per = args.per_domain * len(batcher.domains)
        model = build(args.size, "lora", "cpu")
        algo = make_algo("mldg", model)
        opt = torch.optim.AdamW(trainable(model).values(), lr=1e-4)
        fixed = batcher.next()

        def model_step(batches: dict[str, Batch]) -> None:
            train_step(algo, opt, batches, "cpu")

        def repeat() -> Iterator[dict[str, Batch]]:
            while True:
                yield fixed

        jobs: dict[str, Callable[[], float]] = {
            "model": lambda: rate(repeat, model_step, 1, args.model_steps, clips_per)}
        for nw in args.workers:
            # Workers need one batch each to start up; afterwards the queue is in steady state.
            jobs[f"loader/{nw}"] = lambda nw=nw: rate(lambda: batcher.iterate(nw), lambda b: None, nw + 1,
                                                      args.loader_steps, clips_per)
            jobs[f"e2e/{nw}"] = lambda nw=nw: rate(lambda: batcher.iterate(nw), model_step, 1, args.model_steps, clips_per)
        names = list(jobs)
        rates: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                rates[n].append(jobs[n]())
    out: dict[str, Any] = {"size": args.size, "clips_per_step": clips_per, "domains": len(batcher.domains),
                           "per_domain": args.per_domain, "rounds": args.rounds, "default_workers": DEFAULT_WORKERS}
    for n, v in rates.items():
        q1, q3 = quartiles(v)
        out[n] = {"clips_s": statistics.median(v), "q1": q1, "q3": q3}
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="small", help="backbone size of the model step (LoRA, first-order MLDG, AdamW)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="train.num_workers values to measure")
    p.add_argument("--per-domain", type=int, default=BATCH_PER_DOMAIN, help="utterances per domain per step")
    p.add_argument("--clips", type=int, default=100, help="FLAC files written")
    p.add_argument("--loader-steps", type=int, default=6, help="timed steps per loader-only block")
    p.add_argument("--model-steps", type=int, default=2, help="timed steps per model and end-to-end block")
    p.add_argument("--rounds", type=int, default=3, help="round-robin rounds (median over rounds)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in the main process")
    return p.parse_args(argv)


def main() -> None:
    """Print clips/s of each block and the loader ÷ model margins."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args)
    for nw in args.workers:
        loader, e2e = res[f"loader/{nw}"]["clips_s"], res[f"e2e/{nw}"]["clips_s"]
        print(f"num_workers {nw}: loader {loader:.1f} clips/s, end-to-end {e2e:.1f} clips/s, "
              f"loader ÷ model {loader / res['model']['clips_s']:.2f}")
    print(f"model step alone: {res['model']['clips_s']:.1f} clips/s")


if __name__ == "__main__":
    main()

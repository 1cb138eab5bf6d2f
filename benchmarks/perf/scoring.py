#!/usr/bin/env python
"""Whole-utterance scoring throughput (length-sorted batches vs one utterance at a time) and EER/minDCF on 10⁶ scores."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import build_base  # noqa: E402
from step_time import quartiles  # noqa: E402

from metadg.config import TrainConfig  # noqa: E402
from metadg.engine.scoring import length_batches, score_utterances  # noqa: E402
from metadg.tasks.spoof.metrics import compute_eer, min_dcf  # noqa: E402
from metadg.tasks.base import Utterances  # noqa: E402

EVAL_BATCH = TrainConfig.model_fields["eval_batch_size"].default


def utterances(n: int, min_s: float, max_s: float) -> Utterances:
    """`n` in-memory noise utterances with log-uniform durations (In-the-Wild-like spread of lengths)."""
    rng = np.random.default_rng(0)
    seconds = np.exp(rng.uniform(np.log(min_s), np.log(max_s), n))
    waves = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in seconds]
    return Utterances([f"u{i}" for i in range(n)], np.arange(n) % 2, {}, waves.__getitem__)


def batch_shapes(lengths: list[int], batch: int, sort: bool) -> list[list[int]]:
    """Segment lengths per batch as score_utterances forms them (sort=True), or in arrival order in fixed batches."""
    if not sort:
        return [lengths[b:b + batch] for b in range(0, len(lengths), batch)]
    out = []
    window = 8 * batch  # score_utterances' window: batch_size × 8 utterances are read, sorted and batched
    for start in range(0, len(lengths), window):
        part = sorted(lengths[start:start + window])
        out += [[len(a) for _, a in b] for b in length_batches([(0, np.empty(n, np.int8)) for n in part], batch)]
    return out


def padded_share(batches: list[list[int]]) -> float:
    """Padding as a share of all samples fed to the model."""
    fed = sum(len(b) * max(b) for b in batches)
    return 1 - sum(map(sum, batches)) / fed


def measure_scoring(args: argparse.Namespace) -> dict[str, Any]:
    """Utterances/s batched (sorted by length) vs unbatched, round-robin; max |Δscore| between the two."""
    model = build_base(args.size, "cpu").eval()
    utts = utterances(args.utts, args.min_s, args.max_s)
    lengths = [utts.load(i).shape[0] for i in range(len(utts))]
    sorted_batches = batch_shapes(lengths, args.batch_size, sort=True)
    arrival = batch_shapes(lengths, args.batch_size, sort=False)
    jobs = {"batched": args.batch_size, "unbatched": 1}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    scores: dict[str, np.ndarray] = {}
    for r in range(args.rounds + 1):  # round 0 is warm-up
        for name in list(jobs)[r % 2:] + list(jobs)[:r % 2]:
            t0 = time.perf_counter()
            scores[name] = score_utterances(model, utts, batch_size=jobs[name], progress=False)
            if r:
                times[name].append(time.perf_counter() - t0)
    out: dict[str, Any] = {"size": args.size, "utts": args.utts, "batch_size": args.batch_size, "rounds": args.rounds,
                           "min_s": args.min_s, "max_s": args.max_s, "audio_s": sum(lengths) / 16000,
                           "max_abs_diff": float(np.abs(scores["batched"] - scores["unbatched"]).max()),
                           "pad_sorted": padded_share(sorted_batches), "pad_arrival": padded_share(arrival),
                           "batches_sorted": len(sorted_batches), "batches_arrival": len(arrival)}
    for name, ts in times.items():
        per_s = [args.utts / t for t in ts]
        q1, q3 = quartiles(per_s)
        out[name] = {"utts_s": statistics.median(per_s), "q1": q1, "q3": q3}
    return out


def measure_metrics(n: int, rounds: int) -> dict[str, Any]:
    """Seconds for EER and minDCF on `n` scores (10 % bona fide N(1.5, 1), spoof N(−1.5, 1)), median of `rounds`."""
    rng = np.random.default_rng(0)
    n_bona = n // 10
    bona, spoof = rng.normal(1.5, 1, n_bona), rng.normal(-1.5, 1, n - n_bona)
    jobs = {"eer": lambda: compute_eer(bona, spoof)[0], "min_dcf": lambda: min_dcf(bona, spoof)[0]}
    times: dict[str, list[float]] = {k: [] for k in jobs}
    values: dict[str, float] = {}
    for r in range(rounds):
        for name in list(jobs)[r % 2:] + list(jobs)[:r % 2]:
            t0 = time.perf_counter()
            values[name] = jobs[name]()
            times[name].append(time.perf_counter() - t0)
    return {"n": n, "rounds": rounds, **{k: {"value": values[k], "ms": 1e3 * statistics.median(t),
                                               "q1": 1e3 * quartiles(t)[0], "q3": 1e3 * quartiles(t)[1]}
                                         for k, t in times.items()}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="small", help="backbone size of the scored model")
    p.add_argument("--utts", type=int, default=96, help="utterances scored per pass")
    p.add_argument("--min-s", type=float, default=1.0, help="shortest utterance, seconds")
    p.add_argument("--max-s", type=float, default=10.0, help="longest utterance, seconds")
    p.add_argument("--batch-size", type=int, default=EVAL_BATCH, help="batched pass (train.eval_batch_size default)")
    p.add_argument("--rounds", type=int, default=3, help="timed round-robin rounds")
    p.add_argument("--scores", type=int, default=1_000_000, help="scores for the EER/minDCF timing")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    return p.parse_args(argv)


def main() -> None:
    """Print scoring throughput and metric timings."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    s = measure_scoring(args)
    print(f"batched {s['batched']['utts_s']:.1f} utt/s, unbatched {s['unbatched']['utts_s']:.1f} utt/s, "
          f"speed-up {s['batched']['utts_s'] / s['unbatched']['utts_s']:.2f}×, max |Δ| {s['max_abs_diff']:.1e}, "
          f"padding {s['pad_sorted']:.1%} sorted vs {s['pad_arrival']:.1%} arrival order")
    m = measure_metrics(args.scores, 5)
    print(f"{m['n']:,} scores: EER {m['eer']['ms']:.0f} ms, minDCF {m['min_dcf']['ms']:.0f} ms")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""RawBoost clips/s: NumPy per-clip `RawBoost(algo)` vs `BatchedRawBoost` on whole batches (CPU, and CUDA when present).

    python benchmarks/perf/rawboost.py [--algos 5 3] [--batches 24 96] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import clips, round_robin, table  # noqa: E402

from metadg.engine.utterances import fit_length  # noqa: E402
from metadg.tasks.spoof.rawboost import RawBoost, RawBoostConfig  # noqa: E402
from metadg.tasks.spoof.rawboost_batched import BatchedRawBoost  # noqa: E402

SR = 16000
CLIP = 64_000  # 4 s at 16 kHz
TARGET = 10.0  # batched ÷ NumPy per-clip clips/s
MIB = 2**20


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the values themselves when there are fewer than two)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def make_crops(n: int, seed: int = 0) -> np.ndarray:
    """(n, CLIP) float32: 3.5–4.5 s speech-like clips cropped at a random offset, as the training loader does."""
    rng = np.random.default_rng(seed)
    return np.stack([fit_length(c, CLIP, rng) for c in clips(rng, SR, n)])


def sync(device: str) -> None:
    """Wait for queued kernels, so wall time covers the whole call."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def numpy_job(algo: int, crops: np.ndarray) -> Callable[[], int]:
    """One round of the per-clip path: every crop through `RawBoost(algo)` with its own generator."""
    aug, calls = RawBoost(algo), [0]

    def run() -> int:
        base = calls[0] * len(crops)  # fresh seeds each round, as a training run would draw
        calls[0] += 1
        for i, c in enumerate(crops):
            aug(c, np.random.default_rng(base + i))
        return len(crops)

    return run


def batched_job(algo: int, waves: torch.Tensor, device: str) -> Callable[[], int]:
    """One round of the batched path: one call on the whole batch, already on `device`, synchronised."""
    aug, calls = BatchedRawBoost(RawBoostConfig(algo=algo)), [0]

    def run() -> int:
        base = calls[0] * len(waves)
        calls[0] += 1
        sync(device)
        aug(waves, range(base, base + len(waves)))
        sync(device)
        return len(waves)

    return run


def cuda_peak_mib(job: Callable[[], int]) -> float:
    """Peak CUDA memory (MiB) of one call above what was allocated before it."""
    sync("cuda")
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    job()
    return (torch.cuda.max_memory_allocated() - before) / MIB


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Round-robin rounds of every job (NumPy per clip; batched per device and batch size), per algorithm."""
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    crops = make_crops(max([args.numpy_clips, *args.batches]))
    jobs: dict[str, Callable[[], int]] = {}
    for algo in args.algos:
        jobs[f"numpy/{algo}"] = numpy_job(algo, crops[: args.numpy_clips])
        for dev in devices:
            for b in args.batches:
                jobs[f"batched/{algo}/{dev}/{b}"] = batched_job(algo, torch.from_numpy(crops[:b]).to(dev), dev)
    # Untimed first calls: FFT plans, CUDA context and kernels, allocator pools.
    for _ in range(args.warmup):
        for job in jobs.values():
            job()
    t0 = time.perf_counter()
    times, counts = round_robin(jobs, args.rounds)
    wall = time.perf_counter() - t0
    rates = {n: [counts[n] / t for t in times[n]] for n in jobs}
    rows: list[dict[str, Any]] = []
    for name, r in rates.items():
        parts = name.split("/")
        algo = int(parts[1])
        ref = rates[f"numpy/{algo}"]
        q1, q3 = quartiles(r)
        # Per-round ratio: both ran in the same round, so slow drifts of the machine's load cancel.
        paired = [a / b for a, b in zip(r, ref)]
        p1, p3 = quartiles(paired)
        row = {"algo": algo, "impl": parts[0], "device": parts[2] if len(parts) > 2 else "cpu",
               "batch": int(parts[3]) if len(parts) > 2 else 1, "clips": counts[name], "rounds": len(r),
               "clips_s": statistics.median(r), "q1": q1, "q3": q3,
               "ratio": statistics.median(r) / statistics.median(ref),
               "paired": statistics.median(paired), "paired_q1": p1, "paired_q3": p3, "cuda_peak_mib": None}
        if row["device"].startswith("cuda"):
            row["cuda_peak_mib"] = cuda_peak_mib(jobs[name])
        rows.append(row)
    return {"clip_samples": CLIP, "sr": SR, "threads": torch.get_num_threads(), "rounds": args.rounds,
            "warmup": args.warmup, "numpy_clips": args.numpy_clips, "devices": devices, "wall_s": wall,
            "target": TARGET, "rows": rows}


def targets(res: dict[str, Any]) -> list[tuple[str, float, bool]]:
    """(name, ratio, met) for every batched configuration against the ≥ TARGET clips/s ratio."""
    return [(f"batched ÷ NumPy clips/s, algo {r['algo']}, {r['device']}, batch {r['batch']}",
             r["ratio"], r["ratio"] >= res["target"]) for r in res["rows"] if r["impl"] == "batched"]


def render(res: dict[str, Any]) -> str:
    """Markdown table of the figures and the target verdicts."""
    rows = [[str(r["algo"]), "NumPy per clip" if r["impl"] == "numpy" else "BatchedRawBoost", r["device"],
             str(r["batch"]), f"{r['clips_s']:.1f}", f"{r['q1']:.1f}–{r['q3']:.1f}", f"{r['ratio']:.2f}",
             f"{r['paired']:.2f} ({r['paired_q1']:.2f}–{r['paired_q3']:.2f})",
             "" if r["cuda_peak_mib"] is None else f"{r['cuda_peak_mib']:.0f}"] for r in res["rows"]]
    out = [f"RawBoost on {res['clip_samples']:,}-sample crops ({res['clip_samples'] / res['sr']:g} s), torch threads "
           f"{res['threads']}, median (IQR) of {res['rounds']} round-robin rounds after {res['warmup']} warm-up; "
           f"NumPy: {res['numpy_clips']} clips per round, one generator each; batched: one call per round on a "
           "batch already on its device (CUDA synchronised before and after).", "",
           table(["algo", "implementation", "device", "batch", "clips/s", "IQR", "× NumPy", "per-round × NumPy (IQR)",
                  "CUDA peak MiB"], rows, right={3, 4, 5, 6, 7, 8}), ""]
    out += [f"{name} ≥ {res['target']:g}: {'met' if met else 'not met'} ({ratio:.2f}×)"
            for name, ratio, met in targets(res)]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algos", type=int, nargs="+", default=[5], choices=range(1, 9), help="RawBoost algorithms")
    p.add_argument("--batches", type=int, nargs="+", default=[24, 96], help="batch sizes of the batched path")
    p.add_argument("--numpy-clips", type=int, default=24, help="clips per round of the NumPy per-clip path")
    p.add_argument("--rounds", type=int, default=5, help="timed round-robin rounds (every job once per round)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--devices", nargs="+", help="devices of the batched path (default: cpu, and cuda when available)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", help="also write the table (and verdicts) to this Markdown file")
    return p.parse_args(argv)


def main() -> None:
    """Measure, print the table and the ≥ 10× verdicts."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    res = measure(args)
    report = render(res)
    print(report)
    print(f"\ntimed rounds took {res['wall_s']:.0f} s")
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Scoring utterances/s with LoRA merged into the weights vs the unmerged peft model (what `metadg score` ran before).

    python benchmarks/perf/merged_scoring.py [--sizes small xlsr_300m] [--utts 16] [--rounds 5] [--threads 1]

Both models score the same 4 s utterances through `utterance_logits` (the path of `metadg score`,
`metadg eval` and the MLflow model), interleaved round-robin; their scores must agree to 1e-4.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import build_base, round_robin, with_adapter  # noqa: E402
from step_time import emit, quartiles  # noqa: E402

from metadg.engine.scoring import utterance_logits  # noqa: E402
from metadg.tasks.base import Utterances  # noqa: E402

CLIP = 64_000  # 4 s at 16 kHz


def utterances(n: int) -> Utterances:
    """`n` in-memory 4 s noise utterances."""
    rng = np.random.default_rng(0)
    waves = [(0.1 * rng.standard_normal(CLIP)).astype(np.float32) for _ in range(n)]
    return Utterances([f"u{i}" for i in range(n)], np.arange(n) % 2, {}, waves.__getitem__)


def measure_size(size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Round-robin utterances/s of the unmerged and the merged LoRA model at `size`."""
    unmerged, adapter = with_adapter(build_base(size, "cpu"), "lora", copy_base=False)
    merged = copy.deepcopy(unmerged)
    adapter.merge(merged)
    utts = utterances(args.utts)

    def scorer(model: torch.nn.Module):
        def run() -> float:
            t0 = time.perf_counter()
            utterance_logits(model, utts, batch_size=args.batch_size, progress=False)
            return time.perf_counter() - t0
        return run

    diff = float(np.abs(utterance_logits(merged, utts, progress=False)
                        - utterance_logits(unmerged, utts, progress=False)).max())
    assert diff < 1e-4, f"merged and unmerged scores differ by {diff:.2e} at {size}"
    times = round_robin({"unmerged": scorer(unmerged), "merged": scorer(merged)}, args.rounds, 1, args.budget)
    ratios = [u / m for u, m in zip(times["unmerged"], times["merged"])]
    rate = {k: args.utts / statistics.median(v) for k, v in times.items()}
    return {"size": size, "utts": args.utts, "unmerged_utt_s": rate["unmerged"], "merged_utt_s": rate["merged"],
            "speedup": statistics.median(ratios), "speedup_iqr": quartiles(ratios), "rounds": len(ratios),
            "max_abs_diff": diff}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every size in `--sizes`."""
    return {"threads": args.threads, "utts": args.utts, "batch_size": args.batch_size,
            "rows": [measure_size(s, args) for s in args.sizes]}


def table(res: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per size."""
    lines = [f"{res['utts']} utterances of 4 s per round, batches of {res['batch_size']}, {res['threads']} thread(s).", "",
             "| size | unmerged utt/s | merged utt/s | merged ÷ unmerged speed | IQR | rounds | max abs Δlogit |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lo, hi = r["speedup_iqr"]
        lines.append(f"| {r['size']} | {r['unmerged_utt_s']:.2f} | {r['merged_utt_s']:.2f} | {r['speedup']:.3f} | "
                     f"{lo:.3f}–{hi:.3f} | {r['rounds']} | {r['max_abs_diff']:.1e} |")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["small", "xlsr_300m"])
    p.add_argument("--utts", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--budget", type=float, default=240.0, help="seconds for the timing loop of one size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    emit("\n".join(table(measure(args))), args.out)


if __name__ == "__main__":
    main()

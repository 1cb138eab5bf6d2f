#!/usr/bin/env python
"""Inference time per 4 s clip (batch 1): ONNX Runtime vs PyTorch eager on the same merged LoRA model."""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import NO_DROPOUT, SIZES, emit, quartiles  # noqa: E402  (shared helpers)

from metadg.config import validate_plugin  # noqa: E402
from metadg.deploy.onnx_export import INPUT, OUTPUT, export_model, ort_session  # noqa: E402
from metadg.models import build_model  # noqa: E402
from metadg.registry import ADAPTERS, HEADS, MODELS  # noqa: E402

CLIP = 64000  # 4 s at 16 kHz: the SSL-AASIST recipe's crop
HEAD_NAMES = ("linear", "aasist")
ENGINES = ("ort", "eager")


def build(size: str, head: str) -> nn.Module:
    """Seeded classifier of `size` + `head` with LoRA (r = 16) of random non-zero B, merged, in eval mode."""
    torch.manual_seed(0)
    spec = SIZES[size]
    ssl = {"name": "ssl", "preset": spec["preset"], "config": {**spec["config"], **NO_DROPOUT}}
    backbone = validate_plugin(MODELS, ssl, "b")
    model = build_model(backbone, validate_plugin(HEADS, head, "h"))
    adapter = validate_plugin(ADAPTERS, {"name": "lora"}, "a").build()
    adapter.apply(model)
    with torch.no_grad():  # LoRA B starts at 0: a merge of zeros would prove nothing about the merged graph
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    adapter.merge(model)
    return model.eval()


def time_config(model: nn.Module, session: Any, args: argparse.Namespace, seconds: float) -> dict[str, list[float]]:
    """Round-robin wall times (s) of one clip through ORT and eager, alternating which runs first."""
    x = 0.1 * torch.randn(1, CLIP, generator=torch.Generator().manual_seed(0))
    feed = {INPUT: x.numpy()}
    calls = {"ort": lambda: session.run([OUTPUT], feed), "eager": lambda: model(x)}
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        for i in range(args.warmup + args.rounds):
            # Under heavy background load, stop early (keeping ≥ 5 rounds) so the run stays bounded.
            if i >= args.warmup + 5 and time.perf_counter() > deadline:
                break
            for engine in ENGINES[i % 2:] + ENGINES[:i % 2]:
                t0 = time.perf_counter()
                calls[engine]()
                if i >= args.warmup:
                    times[engine].append(time.perf_counter() - t0)
    return times


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Per (size, head): export (parity-checked at 4 s), then round-robin ORT vs eager timing; one row each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # both engines on the same number of threads
    configs = [(s, h) for s in args.sizes for h in args.heads]
    rows: list[dict[str, Any]] = []
    try:
        for size, head in configs:
            model = build(size, head)
            with tempfile.TemporaryDirectory(prefix="metadg-onnx-bench-") as tmp:
                t0 = time.perf_counter()
                path = export_model(model, Path(tmp) / f"{size}-{head}.onnx", {"benchmark": "onnx_runtime"},
                                    parity_lengths=(CLIP,))
                export_s = time.perf_counter() - t0
                size_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
                session = ort_session(path, threads=args.threads)
                times = time_config(model, session, args, args.budget / len(configs))
            x = 0.1 * torch.randn(1, CLIP, generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                diff = float(np.abs(session.run([OUTPUT], {INPUT: x.numpy()})[0] - model(x).numpy()).max())
            ms = {e: 1e3 * statistics.median(times[e]) for e in ENGINES}
            iqr = {e: quartiles([1e3 * t for t in times[e]]) for e in ENGINES}
            # Per-round ratio: both ran back to back, so slow drifts of the background load cancel.
            paired = [a / b for a, b in zip(times["ort"], times["eager"])]
            p1, p3 = quartiles(paired)
            row = {"size": size, "head": head, "params": sum(p.numel() for p in model.parameters()),
                   "export_s": export_s, "onnx_mb": size_mb, "rounds": len(times["ort"]), "max_abs_diff": diff,
                   "ort_ms": ms["ort"], "ort_q1": iqr["ort"][0], "ort_q3": iqr["ort"][1],
                   "eager_ms": ms["eager"], "eager_q1": iqr["eager"][0], "eager_q3": iqr["eager"][1],
                   "ratio": ms["ort"] / ms["eager"], "paired": statistics.median(paired), "paired_q1": p1,
                   "paired_q3": p3}
            print(f"  {size}/{head}: ORT {row['ort_ms']:.1f} ms, eager {row['eager_ms']:.1f} ms, "
                  f"× {row['ratio']:.2f} over {row['rounds']} rounds (export {export_s:.0f} s)", flush=True)
            rows.append(row)
            del model, session
    finally:
        torch.set_num_threads(threads)
    return {"threads": args.threads, "clip_samples": CLIP, "batch": 1, "rows": rows}


def render(result: dict[str, Any]) -> str:
    """Markdown table of the results."""
    lines = ["| size | head | params | ONNX MB | export s | rounds | ORT ms/clip (IQR) | eager ms/clip (IQR) | "
             "ORT ÷ eager | per-round ÷ (IQR) | max abs Δlogit |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['size']} | {r['head']} | {r['params']:,} | {r['onnx_mb']:.1f} | {r['export_s']:.0f} | "
                     f"{r['rounds']} | {r['ort_ms']:.1f} ({r['ort_q1']:.1f}–{r['ort_q3']:.1f}) | "
                     f"{r['eager_ms']:.1f} ({r['eager_q1']:.1f}–{r['eager_q3']:.1f}) | {r['ratio']:.2f} | "
                     f"{r['paired']:.2f} ({r['paired_q1']:.2f}–{r['paired_q3']:.2f}) | {r['max_abs_diff']:.1e} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES),
                   help="SSL sizes (xlsr_300m: an export of minutes and a ~1.2 GB file)")
    p.add_argument("--heads", nargs="+", default=list(HEAD_NAMES), choices=list(HEAD_NAMES))
    p.add_argument("--rounds", type=int, default=20, help="timed rounds (each engine once per round)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--budget", type=float, default=60, help="seconds for all timing loops; stops early, ≥ 5 rounds")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads and ORT intra_op_num_threads")
    p.add_argument("--out", help="also write the table to this Markdown file")
    return p.parse_args(argv)


def main() -> None:
    """Export, check, time round-robin and print the table."""
    args = parse_args()
    t_start = time.perf_counter()
    result = measure(args)
    header = (f"CPU, threads {args.threads}, batch 1 × {CLIP} samples (4 s), median of ≤ {args.rounds} rounds after "
              f"{args.warmup} warm-up, round-robin; LoRA (r = 16) merged; ORT CPUExecutionProvider, all graph "
              "optimisations")
    report = "\n".join([header, "", render(result)])
    emit(report, args.out, t_start)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Adapter costs: LoRA vs full fine-tuning vs per-head LoRA (step time, step memory, trainable
parameters), and inference of a merged LoRA model vs the plain backbone."""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import NO_DROPOUT, SIZES, emit, in_fresh_processes, peak_step_mib, quartiles, sync, train_step  # noqa: E402  (shared helpers)

from metadg.adapters.base import Adapter  # noqa: E402
from metadg.algorithms.erm import ERM  # noqa: E402
from metadg.config import StrictModel, validate_plugin  # noqa: E402
from metadg.models import build_model  # noqa: E402
from metadg.registry import ADAPTERS, HEADS, MODELS  # noqa: E402
from metadg.engine.batch import Batch  # noqa: E402

# Training variants, all trained with metadg's ERM and AdamW over adapter.trainable_parameters(model).
VARIANTS: dict[str, dict[str, Any]] = {
    "lora": {"name": "lora"},  # r = 16 on q/k/v/out_proj of every layer (LoRAConfig defaults)
    "lora_per_head": {"name": "lora", "r": 1, "per_head": True},  # rank 1 per attention head
    "full": {"name": "full"},
}
INFER = ("plain", "lora_merged", "lora_unmerged")
# (domains, utterances per domain, samples): `small` as in step_time.py; XLS-R with short inputs (4 × 1 s).
SHAPES: dict[str, tuple[int, int, int]] = {
    "tiny": (4, 4, 16000), "small": (4, 4, 16000), "xlsr_300m": (4, 1, 16000),
}
LORA_TIME_TARGET, LORA_MEM_TARGET, MERGED_TOL = 0.8, 0.6, 0.03


def shape(size: str, args: argparse.Namespace) -> tuple[int, int, int]:
    """(domains, per domain, samples) for `size`, `--per-domain` overriding the default."""
    n_dom, per_dom, samples = SHAPES[size]
    return n_dom, args.per_domain or per_dom, samples


def make_batches(n_dom: int, per_dom: int, samples: int, device: str) -> dict[str, Batch]:
    """Fixed-seed random waveforms with random labels, one batch per domain."""
    g = torch.Generator().manual_seed(0)
    return {
        f"d{i}": Batch(torch.randn(per_dom, samples, generator=g), torch.randint(0, 2, (per_dom,), generator=g)).to(device)
        for i in range(n_dom)
    }


def build_base(size: str, device: str) -> nn.Module:
    """Seeded classifier of `size` without any adapter, train mode, dropout/layerdrop/SpecAugment off."""
    torch.manual_seed(0)
    spec = SIZES[size]
    backbone = validate_plugin(MODELS, {"name": "ssl", "preset": spec["preset"], "config": {**spec["config"], **NO_DROPOUT}}, "b")
    return build_model(backbone, validate_plugin(HEADS, "linear", "h")).to(device).train()


def with_adapter(base: nn.Module, variant: str, copy_base: bool = True) -> tuple[nn.Module, Adapter]:
    """`base` (or a deep copy of it: same base weights) with the variant's adapter applied."""
    model = copy.deepcopy(base) if copy_base else base
    adapter = validate_plugin(ADAPTERS, VARIANTS[variant], "a").build()
    adapter.apply(model)
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at 0; non-zero B makes the merge check below mean something
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model.train(), adapter


def make_run(model: nn.Module, adapter: Adapter) -> tuple[ERM, torch.optim.Optimizer, int]:
    """ERM and AdamW over the adapter's trainable parameters; and their count."""
    params = adapter.trainable_parameters(model)
    algo = ERM(StrictModel(), model, params, nn.functional.cross_entropy, seed=0)
    return algo, torch.optim.AdamW(params.values(), lr=1e-4), sum(p.numel() for p in params.values())


def round_robin(fns: dict[str, Any], rounds: int, warmup: int, seconds: float) -> dict[str, list[float]]:
    """Call each fn once per round, rotating the order; seconds per call after `warmup` rounds.

    Stops early (keeping ≥ 5 timed rounds) once `seconds` are spent, so background load cannot
    stretch the run without bound."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    deadline = time.perf_counter() + seconds
    for i in range(warmup + rounds):
        if i >= warmup + 5 and time.perf_counter() > deadline:
            break
        k = i % len(names)
        for name in names[k:] + names[:k]:
            t = fns[name]()
            if i >= warmup:
                times[name].append(t)
    return times


def time_training(size: str, args: argparse.Namespace, seconds: float) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Trainable-parameter counts and round-robin step times of the training variants (own model + AdamW each)."""
    base = build_base(size, args.device)
    batches = make_batches(*shape(size, args), args.device)
    runs, counts = {}, {}
    for v in args.variants:
        algo, opt, counts[v] = make_run(*with_adapter(base, v))
        runs[v] = (algo, opt)
    del base
    fns = {v: (lambda r=runs[v]: train_step(*r, batches, args.device)) for v in args.variants}
    times = round_robin(fns, args.steps, args.warmup, seconds)
    del runs, fns
    gc.collect()
    return counts, times


def forward_time(model: nn.Module, inputs: torch.Tensor, device: str) -> float:
    """One eval-mode, no_grad forward; seconds."""
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(inputs)
    sync(device)
    return time.perf_counter() - t0


def time_inference(size: str, args: argparse.Namespace, seconds: float) -> tuple[float, dict[str, list[float]]]:
    """Merged LoRA vs the plain model (same base weights) vs unmerged LoRA: round-robin forward times.

    Also checks that merging left no peft module behind and did not change the outputs."""
    plain = build_base(size, args.device).eval()
    unmerged, adapter = with_adapter(plain, "lora")
    unmerged.eval()
    merged = copy.deepcopy(unmerged)
    adapter.merge(merged)
    merged.eval()
    kinds = lambda m: [type(x).__name__ for x in m.modules()]  # noqa: E731
    assert kinds(merged) == kinds(plain), "merged LoRA model is not structurally the plain model"
    inputs = Batch.cat(list(make_batches(*shape(size, args), args.device).values())).inputs
    with torch.no_grad():
        ref, got = unmerged(inputs), merged(inputs)
    rel = float((got - ref).abs().max() / ref.abs().max())
    print(f"merge check {size}: merged vs unmerged logits, max relative |Δ| = {rel:.2e}", flush=True)
    assert rel < 1e-4, f"merging changed the outputs ({size}): relative {rel:.2e}"
    models = {"plain": plain, "lora_merged": merged, "lora_unmerged": unmerged}
    fns = {k: (lambda m=models[k]: forward_time(m, inputs, args.device)) for k in INFER}
    return rel, round_robin(fns, args.infer_steps, args.warmup, seconds)


def measure_memory(size: str, variant: str, args: argparse.Namespace) -> float:
    """Peak step working memory (MiB) above the state right after build, over `--mem-steps` steps (AdamW state included)."""
    model, adapter = with_adapter(build_base(size, args.device), variant, copy_base=False)
    algo, opt, _ = make_run(model, adapter)
    batches = make_batches(*shape(size, args), args.device)
    return peak_step_mib(lambda: train_step(algo, opt, batches, args.device), args.mem_steps, args.device)


def memory_in_fresh_process(job: tuple[str, str], args: argparse.Namespace) -> float:
    """`measure_memory` in its own child process (forkserver), so no earlier allocation hides the peak."""
    torch.set_num_threads(args.threads)
    return measure_memory(*job, args)


def iqr(ts: list[float], scale: float = 1e3) -> tuple[float, float]:
    """Interquartile range of `ts` (seconds), in ms."""
    return quartiles([scale * t for t in ts])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="+", default=["small"], choices=list(SIZES),
                   help="backbone sizes (xlsr_300m: ~6–8 min on 2 CPU cores, not in the default)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="training variants")
    p.add_argument("--per-domain", type=int, help="utterances per domain (default: 4, or 1 for xlsr_300m)")
    p.add_argument("--steps", type=int, default=15, help="timed training steps per variant (round-robin)")
    p.add_argument("--infer-steps", type=int, default=100, help="timed forward passes per inference variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (training and inference)")
    p.add_argument("--budget", type=float, default=120,
                   help="seconds for all timing loops, split evenly over sizes; training may use ¾ of a size's share, "
                   "inference the rest (≥ ¼); each loop stops early once its share is spent, after ≥ 5 rounds")
    p.add_argument("--mem-steps", type=int, default=2, help="steps run in each memory child process")
    p.add_argument("--mem-jobs", type=int, default=2, help="memory child processes run at once (before timing starts)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: steadier on a shared 2-core machine; use 2 on a quiet one)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the tables (and verdicts) to this Markdown file")
    return p.parse_args(argv)


def measure(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Memory in child processes, then per size: round-robin training steps and inference forwards; training and inference rows."""
    # Memory first, one fresh forkserver child per (size, variant); they never overlap the timing loops.
    jobs = [(s, v) for s in args.sizes for v in args.variants]
    mem = in_fresh_processes(memory_in_fresh_process, jobs, args)
    train_rows: list[dict[str, Any]] = []
    infer_rows: list[dict[str, Any]] = []
    share = args.budget / len(args.sizes)
    for size in args.sizes:
        n_dom, per_dom, samples = shape(size, args)
        batch = f"{n_dom * per_dom} × {samples / 16000:g} s"
        t_size = time.perf_counter()
        counts, times = time_training(size, args, 0.75 * share)
        ms = {v: 1e3 * statistics.median(times[v]) for v in args.variants}
        for v in args.variants:
            lo, hi = iqr(times[v])
            print(f"  {size}/{v}: median {ms[v]:.1f} ms/step, IQR {lo:.1f}–{hi:.1f} ms over {len(times[v])} steps", flush=True)
            train_rows.append({"size": size, "variant": v, "params": counts[v], "ms": ms[v], "q1": lo, "q3": hi,
                               "steps": len(times[v]), "mib": mem[(size, v)], "batch": batch,
                               **{f"ms_{k}": ms[k] for k in ms}, **{f"mib_{k}": mem[(size, k)] for k in args.variants}})
        # Inference gets what training left of this size's share (at least a quarter of it).
        left = max(0.25 * share, share - (time.perf_counter() - t_size))
        merge_rel, ftimes = time_inference(size, args, left)
        fms = {k: 1e3 * statistics.median(ftimes[k]) for k in INFER}
        for k in INFER:
            lo, hi = iqr(ftimes[k])
            # Paired ratio: both forwards of a round ran back to back, so slow drifts of background load cancel.
            paired = [a / b for a, b in zip(ftimes[k], ftimes["plain"])]
            plo, phi = iqr(paired, scale=1.0)
            print(f"  {size}/{k} inference: median {fms[k]:.2f} ms/forward, IQR {lo:.2f}–{hi:.2f} ms"
                  f" over {len(ftimes[k])} forwards; per-round ratio to plain: median {statistics.median(paired):.3f},"
                  f" IQR {plo:.3f}–{phi:.3f}", flush=True)
            infer_rows.append({"size": size, "variant": k, "ms": fms[k], "q1": lo, "q3": hi, "steps": len(ftimes[k]),
                               "ratio": fms[k] / fms["plain"], "paired": statistics.median(paired), "paired_q1": plo,
                               "paired_q3": phi, "batch": batch, "merge_rel_diff": merge_rel})
    return train_rows, infer_rows


def main() -> None:
    """Measure, then print the tables and verdicts."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    train_rows, infer_rows = measure(args)

    def rel(r: dict[str, Any], key: str, ref: str) -> str:
        return f"{r[key] / r[f'{key}_{ref}']:.2f}" if f"{key}_{ref}" in r else "–"

    lines = ["| size | batch | variant | trainable params | median ms/step | × full | × lora | peak step MB | mem × full | mem × lora |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in train_rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['variant']} | {r['params']:,} | {r['ms']:.1f} | {rel(r, 'ms', 'full')} | "
                     f"{rel(r, 'ms', 'lora')} | {r['mib']:.1f} | {rel(r, 'mib', 'full')} | {rel(r, 'mib', 'lora')} |")
    lines += ["", "| size | batch | inference model | median ms/forward | × plain | × plain, per-round median |",
              "|---|---|---|---:|---:|---:|"]
    for r in infer_rows:
        lines.append(f"| {r['size']} | {r['batch']} | {r['variant']} | {r['ms']:.2f} | {r['ratio']:.3f} | {r['paired']:.3f} |")

    verdicts = []
    by = {(r["size"], r["variant"]): r for r in train_rows}
    for size in args.sizes:
        lora, full, ph = by.get((size, "lora")), by.get((size, "full")), by.get((size, "lora_per_head"))
        if lora and full:
            t, m = lora["ms"] / full["ms"], lora["mib"] / full["mib"]
            verdicts.append(f"LoRA ≤ {LORA_TIME_TARGET} × full fine-tuning step time [{size}]: "
                            f"{'PASS' if t <= LORA_TIME_TARGET else 'FAIL'} ({t:.2f}×)")
            verdicts.append(f"LoRA ≤ {LORA_MEM_TARGET} × full fine-tuning peak step memory [{size}]: "
                            f"{'PASS' if m <= LORA_MEM_TARGET else 'FAIL'} ({m:.2f}×)")
        if lora and ph:
            verdicts.append(f"per-head LoRA (r = 1 per head) vs LoRA r = 16 [{size}]: {ph['ms'] / lora['ms']:.2f}× step time, "
                            f"{ph['mib'] / lora['mib']:.2f}× peak step memory, {ph['params'] / lora['params']:.2f}× trainable "
                            f"params ({ph['params']:,} vs {lora['params']:,}; no target)")
        inf = {r["variant"]: r for r in infer_rows if r["size"] == size}
        # Judged on the per-round ratio: under background load the two medians can come from rounds
        # that saw different load, which moves their ratio by more than the ±3 % under test.
        merged, unmerged = inf["lora_merged"], inf["lora_unmerged"]
        verdicts.append(f"merged LoRA inference = plain backbone ± {MERGED_TOL:.0%} (per-round median) [{size}]: "
                        f"{'PASS' if abs(merged['paired'] - 1) <= MERGED_TOL else 'FAIL'} ({merged['paired']:.3f}×, "
                        f"ratio of medians {merged['ratio']:.3f}×; unmerged LoRA {unmerged['paired']:.3f}×, "
                        f"ratio of medians {unmerged['ratio']:.3f}×)")
    header = (f"device {args.device}, threads {args.threads}, ERM + AdamW, median of ≤ {args.steps} steps / "
              f"≤ {args.infer_steps} forwards after {args.warmup} warm-up, round-robin")
    report = "\n".join([header, "", *lines, "", *verdicts])
    emit(report, args.out, t_start)


if __name__ == "__main__":
    main()

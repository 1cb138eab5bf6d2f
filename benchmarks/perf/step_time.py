#!/usr/bin/env python
"""Step time and step memory of metadg ERM, metadg first-order MLDG and a naive deep-copy MLDG."""

from __future__ import annotations

import argparse
import copy
import gc
import multiprocessing
import os
import resource
import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metadg.algorithms.base import Algorithm, accumulate_grad
from metadg.algorithms.erm import ERM
from metadg.algorithms.mldg import MLDG, MLDGConfig
from metadg.config import StrictModel, validate_plugin
from metadg.models import build_model
from metadg.registry import ADAPTERS, HEADS, MODELS
from metadg.engine.batch import Batch

# Train mode everywhere, but dropout, layerdrop and SpecAugment off: layerdrop skips
# layers at random, which would make step times noisy and the gradient check meaningless.
NO_DROPOUT = {
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0, "final_dropout": 0.0, "layerdrop": 0.0, "mask_time_prob": 0.0,
}
# `small` reuses tiny's conv kernels/strides and positional-conv shape; only widths/depth grow.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"preset": "tiny", "config": {}},
    "small": {"preset": "tiny", "config": {
        "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 1024, "conv_dim": [128] * 7,
    }},
    "xlsr_300m": {"preset": "xlsr_300m", "config": {}},
}
ADAPTER_CFGS: dict[str, dict[str, Any]] = {"lora": {"name": "lora"}, "full": {"name": "full"}}  # LoRA: r=16, q/k/v/out
METHODS = ("erm", "mldg", "naive_mldg")
N_DOMAINS, PER_DOMAIN, SAMPLES = 4, 4, 16000
ALPHA, BETA = 1e-3, 1.0  # MLDGConfig defaults, used for timing
CHECK_ALPHA, CHECK_BETA = 0.1, 0.5  # a large inner step, so θ' visibly differs from θ in the check
MIB = 2**20
TARGETS = {"lora": 1.10, "full": 1.25}  # first-order MLDG step time ≤ this × ERM (issue 6)


class NaiveMLDG(Algorithm):
    """DomainBed-style first-order MLDG, single meta-train/meta-test split per step (metadg's semantics)."""

    def __init__(self, model: nn.Module, params: Mapping[str, nn.Parameter], alpha: float, beta: float, seed: int) -> None:
        """Same generator seed as metadg's MLDG, so both draw the same splits."""
        super().__init__(StrictModel(), model, params, nn.functional.cross_entropy, seed=seed)
        self.alpha, self.beta = alpha, beta

    def update(self, batches: Mapping[str, Batch], split: tuple[list[str], list[str]] | None = None) -> dict[str, float]:
        """Deep-copy the model, real SGD step on the copy with ∇F, add β·∇G(copy) to the original's grads."""
        domains = sorted(batches)
        if split is None:  # the same draw as MLDG.split with n_meta_test=1
            order = torch.randperm(len(domains), generator=self.generator).tolist()
            split = ([d for d in domains if d != domains[order[0]]], [domains[order[0]]])
        b_tr = Batch.cat([batches[d] for d in split[0]])
        b_te = Batch.cat([batches[d] for d in split[1]])
        inner = copy.deepcopy(self.model)  # the whole model, frozen backbone included: the cost under test
        named = dict(inner.named_parameters())
        inner_params = {n: named[n] for n in self.params}
        loss_f = self.loss_fn(inner(b_tr.inputs, b_tr.lengths), b_tr.labels)
        loss_f.backward()  # DomainBed runs the meta-train backward on the copy ...
        accumulate_grad(self.params, {n: q.grad for n, q in inner_params.items()})  # ... and copies ∇F back
        torch.optim.SGD(inner_params.values(), lr=self.alpha).step()  # θ' = θ − α∇F, a real step
        loss_g = self.loss_fn(inner(b_te.inputs, b_te.lengths), b_te.labels)
        g_g = torch.autograd.grad(loss_g, list(inner_params.values()), allow_unused=True)
        accumulate_grad(self.params, {n: None if g is None else self.beta * g for n, g in zip(inner_params, g_g)})
        return {"loss": float(loss_f.detach()) + self.beta * float(loss_g.detach())}


def per_domain(args: argparse.Namespace | None = None) -> int:
    """Utterances per domain: `--per-domain` if given, else 4 at every size."""
    # Not fewer at XLS-R: with 1 clip per domain the meta-test pass is a batch of one, whose
    # small GEMMs cost MLDG ~1.13× ERM in CPU time, against ~1.05× with 4 clips.
    return getattr(args, "per_domain", None) or PER_DOMAIN


def make_batches(device: str, n: int = PER_DOMAIN) -> dict[str, Batch]:
    """Fixed-seed random 1 s waveforms with random labels, one batch of `n` per domain."""
    g = torch.Generator().manual_seed(0)
    return {
        f"d{i}": Batch(torch.randn(n, SAMPLES, generator=g), torch.randint(0, 2, (n,), generator=g)).to(device)
        for i in range(N_DOMAINS)
    }


def build(size: str, adapter_name: str, device: str) -> nn.Module:
    """Seeded classifier of `size` with the adapter applied, in train mode with dropout off."""
    torch.manual_seed(0)
    spec = SIZES[size]
    backbone = validate_plugin(MODELS, {"name": "ssl", "preset": spec["preset"], "config": {**spec["config"], **NO_DROPOUT}}, "b")
    model = build_model(backbone, validate_plugin(HEADS, "linear", "h"))
    validate_plugin(ADAPTERS, ADAPTER_CFGS[adapter_name], "a").build().apply(model)
    with torch.no_grad():  # LoRA B starts at 0, which would zero every lora_A gradient in the check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model.to(device).train()


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name → parameter of what trains (same rule as Adapter.trainable_parameters)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def make_algo(method: str, model: nn.Module, alpha: float = ALPHA, beta: float = BETA) -> Algorithm:
    """One of the three compared gradient computations on `model`'s trainable params."""
    params, ce = trainable(model), nn.functional.cross_entropy
    if method == "erm":
        return ERM(StrictModel(), model, params, ce, seed=0)
    if method == "mldg":
        return MLDG(MLDGConfig(alpha=alpha, beta=beta, n_meta_test=1, first_order=True), model, params, ce, seed=0)
    return NaiveMLDG(model, params, alpha, beta, seed=0)


def sync(device: str) -> None:
    """Wait for queued kernels, so wall time covers the whole step."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step(algo: Algorithm, opt: torch.optim.Optimizer, batches: dict[str, Batch], device: str) -> float:
    """zero_grad → update → optimizer.step; returns seconds."""
    sync(device)
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    algo.update(batches)
    opt.step()
    sync(device)
    return time.perf_counter() - t0


def check_gradients(size: str, adapter: str, device: str, n: int = PER_DOMAIN) -> float:
    """One step from identical states: metadg MLDG grads vs naive grads; returns max relative diff."""
    model = build(size, adapter, device)
    twin = copy.deepcopy(model)
    batches = make_batches(device, n)
    algo = make_algo("mldg", model, CHECK_ALPHA, CHECK_BETA)
    naive = make_algo("naive_mldg", twin, CHECK_ALPHA, CHECK_BETA)
    algo.update(batches)
    naive.update(batches, split=algo.last_split)  # type: ignore[call-arg]  # the very same split
    got, ref = trainable(model), trainable(twin)
    diff = max(float((got[n].grad - ref[n].grad).abs().max()) for n in got)
    scale = max(float(ref[n].grad.abs().max()) for n in ref)
    rel = diff / scale
    print(f"check {size}/{adapter}: split {algo.last_split}, max|Δgrad| = {diff:.3e}, relative {rel:.3e}", flush=True)
    assert rel < 1e-5, f"metadg MLDG and naive MLDG gradients differ ({size}/{adapter}): relative {rel:.3e}"
    return rel


def time_config(
    size: str, adapter: str, args: argparse.Namespace, seconds: float
) -> tuple[int, dict[str, list[float]], dict[str, list[float]]]:
    """Trainable-parameter count, and round-robin wall and process-CPU step times of the three methods (one shared model + AdamW)."""
    # One model for all methods: a step's cost does not depend on the weights' values, and
    # three XLS-R copies with full fine-tuning and AdamW state would need ~15 GB.
    model = build(size, adapter, args.device)
    n_params = sum(p.numel() for p in trainable(model).values())
    batches = make_batches(args.device, per_domain(args))
    opt = torch.optim.AdamW(trainable(model).values(), lr=1e-4)
    runs = {method: (make_algo(method, model), opt) for method in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    cpu: dict[str, list[float]] = {m: [] for m in METHODS}
    deadline = time.perf_counter() + seconds
    for i in range(args.warmup + args.steps):
        # Under heavy background load, stop early (keeping ≥ 5 rounds) so the run stays bounded.
        if i >= args.warmup + 5 and time.perf_counter() > deadline:
            break
        order = METHODS[i % 3:] + METHODS[:i % 3]  # rotate, so no method always runs right after another
        for method in order:
            # Process CPU time barely moves when other jobs take the cores away: a load-robust cross-check.
            c0 = time.process_time()
            t = train_step(*runs[method], batches, args.device)
            if i >= args.warmup:
                times[method].append(t)
                cpu[method].append(time.process_time() - c0)
    return n_params, times, cpu


def current_rss() -> int:
    """Resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_memory(size: str, adapter: str, method: str, args: argparse.Namespace) -> float:
    """Peak step working memory (MiB) above the state right after build, over `--mem-steps` steps."""
    model = build(size, adapter, args.device)
    algo, batches = make_algo(method, model), make_batches(args.device, per_domain(args))
    opt = torch.optim.AdamW(trainable(model).values(), lr=1e-4)
    return peak_step_mib(lambda: train_step(algo, opt, batches, args.device), args.mem_steps, args.device)


def in_fresh_processes(fn: Callable[[Any, argparse.Namespace], float], jobs: list[Any], args: argparse.Namespace) -> dict[Any, float]:
    """{job: fn(job, args)}, each job in its own child process (`--mem-jobs` at a time)."""
    # forkserver: the server imports torch/transformers/peft once (~7 s) and forks a
    # pristine child per job (max_tasks_per_child=1), instead of re-importing per job.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "transformers", "peft", "metadg.models", "metadg.adapters", "metadg.algorithms"])
    with ProcessPoolExecutor(args.mem_jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
        return dict(zip(jobs, pool.map(fn, jobs, [args] * len(jobs))))


def peak_step_mib(step: Callable[[], object], steps: int, device: str) -> float:
    """Peak memory (MiB) of `steps` calls of `step` above what was in use before them."""
    gc.collect()
    if device.startswith("cuda"):
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before = current_rss()
        try:  # reset the RSS high-water mark, so building the model cannot count as the step's peak
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
    for _ in range(steps):  # ≥ 2: AdamW allocates its state in the first step
        step()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return (peak - before) / MIB


def memory_in_fresh_process(job: tuple[str, str, str], args: argparse.Namespace) -> float:
    """`measure_memory` in its own child process (forkserver), so no earlier allocation hides the peak."""
    torch.set_num_threads(args.threads)
    return measure_memory(*job, args)


def emit(report: str, out: str | None, started: float | None = None) -> None:
    """Print a script's Markdown report (and its runtime since `started`); also write it to `out` if given."""
    print("\n" + report)
    if started is not None:
        print(f"\ntotal runtime {time.perf_counter() - started:.0f} s")
    if out:
        Path(out).write_text(report + "\n")


def quartiles(values: list[float]) -> tuple[float, float]:
    """First and third quartile (the values themselves when there are fewer than two)."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Memory in child processes, then per (size, adapter): gradient check and round-robin timing; one row per method."""
    configs = [(s, a) for s in args.sizes for a in args.adapters]
    # Memory first, one fresh child process per job; they never overlap the timing loop below.
    jobs = [(s, a, m) for s, a in configs for m in METHODS]
    mem = in_fresh_processes(memory_in_fresh_process, jobs, args)
    rows: list[dict[str, Any]] = []
    for size, adapter in configs:
        n = per_domain(args)
        check = check_gradients(size, adapter, args.device, n)
        n_params, times, cpu = time_config(size, adapter, args, args.budget / len(configs))
        ms = {m: 1e3 * statistics.median(times[m]) for m in METHODS}
        cpu_ms = {m: 1e3 * statistics.median(cpu[m]) for m in METHODS}
        for m in METHODS:
            q1, q3 = quartiles([1e3 * t for t in times[m]])
            # Per-round ratio: both steps of a round ran back to back, so slow load drifts cancel.
            paired = [a / b for a, b in zip(times[m], times["erm"])]
            p1, p3 = quartiles(paired)
            print(f"  {size}/{adapter}/{m}: median {ms[m]:.1f} ms, IQR {q1:.1f}–{q3:.1f} ms over {len(times[m])} steps",
                  flush=True)
            rows.append({"size": size, "adapter": adapter, "batch": f"{N_DOMAINS} × {n} × {SAMPLES / 16000:g} s",
                         "params": n_params, "method": m, "steps": len(times[m]), "ms": ms[m], "q1": q1, "q3": q3,
                         "ratio": ms[m] / ms["erm"], "paired": statistics.median(paired), "paired_q1": p1,
                         "paired_q3": p3, "vs_naive": ms[m] / ms["naive_mldg"], "cpu_ms": cpu_ms[m],
                         "cpu_ratio": cpu_ms[m] / cpu_ms["erm"], "mib": mem[(size, adapter, m)],
                         "mem_ratio": mem[(size, adapter, m)] / mem[(size, adapter, "erm")], "grad_check": check})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the results."""
    lines = ["| size | adapter | batch | trainable params | method | steps | median ms/step | IQR ms | × ERM | "
             "per-round × ERM (IQR) | × naive | CPU ms/step | CPU × ERM | peak step MB | mem × ERM |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['adapter']} | {r['batch']} | {r['params']:,} | {r['method']} | {r['steps']} | "
                     f"{r['ms']:.1f} | {r['q1']:.1f}–{r['q3']:.1f} | {r['ratio']:.2f} | "
                     f"{r['paired']:.2f} ({r['paired_q1']:.2f}–{r['paired_q3']:.2f}) | {r['vs_naive']:.2f} | "
                     f"{r['cpu_ms']:.1f} | {r['cpu_ratio']:.2f} | {r['mib']:.1f} | {r['mem_ratio']:.2f} |")
    return "\n".join(lines)


def timing_arguments(p: argparse.ArgumentParser, steps: int, warmup: int, budget: float, min_rounds: int) -> None:
    """The options every round-robin step-time script shares: batch, rounds, budget, memory children, device."""
    p.add_argument("--per-domain", type=int, help="utterances per domain (default 4)")
    p.add_argument("--steps", type=int, default=steps, help="timed rounds (every method once per round)")
    p.add_argument("--warmup", type=int, default=warmup, help="untimed rounds first")
    p.add_argument("--budget", type=float, default=budget,
                   help=f"seconds for all timing loops; stops early, ≥ {min_rounds} rounds")
    p.add_argument("--mem-steps", type=int, default=2, help="steps run in each memory child process")
    p.add_argument("--mem-jobs", type=int, default=2, help="memory child processes run at once (before timing starts)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the table (and verdicts) to this Markdown file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=list(SIZES))
    p.add_argument("--adapters", nargs="+", default=["lora", "full"], choices=list(ADAPTER_CFGS))
    timing_arguments(p, steps=15, warmup=2, budget=120, min_rounds=5)
    return p.parse_args(argv)


def main() -> None:
    """Check gradients, time round-robin, measure memory in child processes, print the table and verdicts."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    rows = measure(args)
    verdicts = []
    for r in rows:
        if r["method"] == "mldg":
            limit = TARGETS[r["adapter"]]
            verdict = "PASS" if r["ratio"] <= limit else "FAIL"
            verdicts.append(f"first-order MLDG ≤ {limit:.2f} × ERM step time with {r['adapter']} [{r['size']}]: "
                            f"{verdict} ({r['ratio']:.2f}×)")
    header = (f"device {args.device}, threads {args.threads}, {N_DOMAINS} domains × utterances × {SAMPLES} samples, "
              f"median of ≤ {args.steps} steps after {args.warmup} warm-up, round-robin")
    report = "\n".join([header, "", render(rows), "", *verdicts])
    emit(report, args.out, t_start)


if __name__ == "__main__":
    main()

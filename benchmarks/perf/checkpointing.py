#!/usr/bin/env python
"""Gradient checkpointing (`model.backbone.gradient_checkpointing`) on vs off: peak step memory, activation
memory and step time, with LoRA and with full fine-tuning.

    python benchmarks/perf/checkpointing.py [--sizes xlsr_300m] [--quick] [--steps 5] [--out checkpointing.md]

A step is ERM's (`zero_grad → update → AdamW.step`) on 4 domains × 4 × 1 s, as in `step_time.py`; dropout,
layerdrop and SpecAugment off. Activation memory = the peak during one step minus the memory resident right
after it (weights + gradients + AdamW state), in a step whose gradients stay allocated throughout: what the
forward keeps for the backward plus the transient buffers at the peak, i.e. what checkpointing can shrink
(below it: the conv feature encoder's forward transients, shown as the floor). Memory: each (size, adapter, on/off) in a fresh
forkserver child. Step time: one model per (size, adapter), checkpointing switched on and off round-robin.
Targets (issue): checkpointing ≤ 0.5 × activation memory at ≤ 1.4 × step time.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapters import round_robin  # noqa: E402  (shared helpers)
from step_time import (  # noqa: E402
    MIB, N_DOMAINS, NO_DROPOUT, SAMPLES, SIZES, current_rss, emit, in_fresh_processes, make_batches, peak_step_mib,
    per_domain, quartiles, sync, timing_arguments, train_step,
)

from metadg.algorithms.erm import ERM  # noqa: E402
from metadg.config import StrictModel, validate_plugin  # noqa: E402
from metadg.models import build_model  # noqa: E402
from metadg.registry import ADAPTERS, HEADS, MODELS  # noqa: E402

ADAPTER_CFGS: dict[str, dict[str, Any]] = {"lora": {"name": "lora"}, "full": {"name": "full"}}  # LoRA: r=16, q/k/v/out
ACTIVATION_TARGET, TIME_TARGET = 0.5, 1.4  # checkpointing ÷ none (issue)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters


def build(size: str, adapter: str, device: str, checkpointing: bool) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """Seeded classifier of `size` with the adapter applied, train mode, dropout off; and its trainable parameters."""
    torch.manual_seed(0)
    spec = SIZES[size]
    backbone = {"name": "ssl", "preset": spec["preset"], "config": {**spec["config"], **NO_DROPOUT},
                "gradient_checkpointing": checkpointing}
    model = build_model(validate_plugin(MODELS, backbone, "model.backbone"), validate_plugin(HEADS, "linear", "h"))
    ad = validate_plugin(ADAPTERS, ADAPTER_CFGS[adapter], "adapter").build()
    ad.apply(model)
    with torch.no_grad():  # LoRA B starts at 0, which would zero every lora_A gradient in the check
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return model.to(device).train(), ad.trainable_parameters(model)


def checkpointed_modules(model: nn.Module) -> list[nn.Module]:
    """The modules transformers flagged for checkpointing (encoder and conv layers, their containers)."""
    return [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]


def switch(modules: list[nn.Module], on: bool) -> None:
    """Turn checkpointing of a model built with it on or off (the flag transformers reads in each forward)."""
    for m in modules:
        m.gradient_checkpointing = on


def return_freed_memory() -> None:
    """Make glibc hand freed tensors back to the OS at once, so the RSS right after a step is what is still live."""
    # By default glibc raises its mmap threshold after the first large free (up to
    # 32 MiB) and keeps later freed activations in its heap: the RSS after a step
    # would then still count them, and activation memory would come out too small.
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 * 1024)  # a fixed threshold also stops the dynamic raise
        libc.mallopt(M_TRIM_THRESHOLD, 1024 * 1024)
    except (OSError, AttributeError):  # not glibc: the figure is then a lower bound
        pass


def resident(device: str) -> int:
    """Bytes in use now: the process RSS (CPU) or the CUDA allocator's allocated bytes."""
    if device.startswith("cuda"):
        sync(device)
        return torch.cuda.memory_allocated()
    return current_rss()


def reset_peak(device: str) -> None:
    """Start a new high-water mark."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    with open("/proc/self/clear_refs", "w") as f:  # 5: reset the RSS high-water mark (VmHWM)
        f.write("5")


def peak(device: str) -> int:
    """Bytes at the high-water mark since `reset_peak`."""
    if device.startswith("cuda"):
        sync(device)
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def state_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Bytes of the weights, gradients and optimizer state tensors (what stays resident between steps)."""
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_job(job: tuple[str, str, bool], args: argparse.Namespace) -> dict[str, float]:
    """In a fresh child: peak step memory over `--mem-steps` steps, then one more step's activation memory (MiB)."""
    size, adapter, checkpointing = job
    torch.set_num_threads(args.threads)
    if not args.device.startswith("cuda"):
        return_freed_memory()
    model, params = build(size, adapter, args.device, checkpointing)
    algo = ERM(StrictModel(), model, params, nn.functional.cross_entropy, seed=0)
    opt = torch.optim.AdamW(params.values(), lr=1e-4)
    batches = make_batches(args.device, per_domain(args))
    step = lambda: train_step(algo, opt, batches, args.device)  # noqa: E731
    peak_mib = peak_step_mib(step, args.mem_steps, args.device)  # above the just-built model, AdamW state included
    gc.collect()
    reset_peak(args.device)
    # One more step in the steady state (AdamW state exists), its gradients
    # zeroed in place rather than freed: freeing them at zero_grad would make
    # room that the activations then fill unseen (with full fine-tuning the
    # gradients are as large as the activations of a 4 × 4 × 1 s step).
    opt.zero_grad(set_to_none=False)
    algo.update(batches)
    opt.step()
    sync(args.device)
    high, after = peak(args.device), resident(args.device)
    # The floor no layer-level checkpointing can go below: the conv feature
    # encoder's forward alone, without a graph, holds a few tensors at the frame
    # rate of its first layers (64× the transformer's) at once; at tiny and small
    # shape that is most of a step's peak.
    hf = model.backbone.hf_model
    hf = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
    inputs = torch.cat([b.inputs for b in batches.values()])
    reset_peak(args.device)
    with torch.no_grad():
        hf.feature_extractor(inputs)
    floor = peak(args.device) - resident(args.device)
    return {"peak_mib": peak_mib, "activation_mib": (high - after) / MIB, "resident_mib": after / MIB,
            "state_mib": state_bytes(model, opt) / MIB, "conv_floor_mib": floor / MIB}


def check_gradients(model: nn.Module, params: dict[str, nn.Parameter], modules: list[nn.Module],
                    batches: dict[str, Any]) -> float:
    """Max relative |Δgrad| between one ERM update with checkpointing off and one with it on, same weights."""
    algo = ERM(StrictModel(), model, params, nn.functional.cross_entropy, seed=0)
    grads = []
    for on in (False, True):
        switch(modules, on)
        for p in params.values():
            p.grad = None
        algo.update(batches)
        grads.append({n: p.grad.detach().clone() for n, p in params.items() if p.grad is not None})
    off, on_ = grads
    scale = max(float(g.abs().max()) for g in off.values())
    rel = max(float((on_[n] - off[n]).abs().max()) for n in off) / scale
    assert set(off) == set(on_) and rel < 1e-5, f"checkpointing changed the gradients: relative {rel:.2e}"
    return rel


def time_config(size: str, adapter: str, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    """Gradient check, then round-robin step times with checkpointing off and on (one model, one AdamW)."""
    # One model: a step's cost does not depend on the weights, and two XLS-R
    # copies with full fine-tuning and AdamW state would need ~10 GB.
    model, params = build(size, adapter, args.device, checkpointing=True)
    modules = checkpointed_modules(model)
    batches = make_batches(args.device, per_domain(args))
    check = check_gradients(model, params, modules, batches)  # doubles as a warm-up round of both
    algo = ERM(StrictModel(), model, params, nn.functional.cross_entropy, seed=0)
    opt = torch.optim.AdamW(params.values(), lr=1e-4)

    cpu: dict[str, list[float]] = {"off": [], "on": []}

    def run(key: str) -> float:
        switch(modules, key == "on")
        # Process CPU time barely moves when other jobs take the cores away: a load-robust cross-check.
        c0 = time.process_time()
        t = train_step(algo, opt, batches, args.device)
        cpu[key].append(time.process_time() - c0)
        return t

    warmup = max(0, args.warmup - 1)
    times = round_robin({"off": lambda: run("off"), "on": lambda: run("on")}, args.steps, warmup, seconds)
    cpu = {k: v[warmup:] for k, v in cpu.items()}  # the rounds round_robin timed
    n_params = sum(p.numel() for p in params.values())
    del model, params, algo, opt
    gc.collect()
    return {"check": check, "times": times, "cpu": cpu, "params": n_params, "n_modules": len(modules)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Memory in fresh children, then per (size, adapter) the gradient check and round-robin timing; rows + targets."""
    configs = [(s, a) for s in args.sizes for a in args.adapters]
    # Memory first, one fresh forkserver child per job; they never overlap the timing loops below.
    mem = in_fresh_processes(memory_job, [(s, a, on) for s, a in configs for on in (False, True)], args)
    rows: list[dict[str, Any]] = []
    for size, adapter in configs:
        t = time_config(size, adapter, args, args.budget / len(configs))
        times = t["times"]
        ms = {k: 1e3 * statistics.median(times[k]) for k in times}
        iqr = {k: quartiles([1e3 * x for x in times[k]]) for k in times}
        # Per-round ratio: both steps of a round ran back to back, so slow load drifts cancel.
        paired = [a / b for a, b in zip(times["on"], times["off"])]
        p1, p3 = quartiles(paired)
        off, on = mem[(size, adapter, False)], mem[(size, adapter, True)]
        row = {
            "size": size, "adapter": adapter, "batch": f"{N_DOMAINS} × {per_domain(args)} × {SAMPLES / 16000:g} s",
            "params": t["params"], "steps": len(times["on"]), "grad_check": t["check"],
            "ms_off": ms["off"], "ms_on": ms["on"], "iqr_off": iqr["off"], "iqr_on": iqr["on"],
            "time_ratio": ms["on"] / ms["off"], "paired": statistics.median(paired), "paired_iqr": (p1, p3),
            "cpu_ratio": statistics.median(t["cpu"]["on"]) / statistics.median(t["cpu"]["off"]),
            **{f"{k}_off": v for k, v in off.items()}, **{f"{k}_on": v for k, v in on.items()},
            "activation_ratio": on["activation_mib"] / off["activation_mib"],
            "peak_ratio": on["peak_mib"] / off["peak_mib"],
        }
        row["activation_met"] = row["activation_ratio"] <= ACTIVATION_TARGET
        row["time_met"] = row["paired"] <= TIME_TARGET
        print(f"  {size}/{adapter}: step {ms['off']:.1f} → {ms['on']:.1f} ms (per-round {row['paired']:.2f}×), "
              f"activations {off['activation_mib']:.1f} → {on['activation_mib']:.1f} MiB "
              f"({row['activation_ratio']:.2f}×) over {row['steps']} rounds", flush=True)
        rows.append(row)
    return {"rows": rows, "targets": {"activation": ACTIVATION_TARGET, "time": TIME_TARGET},
            "device": args.device, "threads": args.threads, "mem_steps": args.mem_steps}


def render(result: dict[str, Any]) -> str:
    """Markdown table and verdicts."""
    lines = ["| size | adapter | batch | trainable params | rounds | ms/step off | ms/step on (IQR) | × time | "
             "per-round × (IQR) | CPU × | peak step MiB off → on | activation MiB off → on | × activation | "
             "conv floor MiB | resident MiB (tensors) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(
            f"| {r['size']} | {r['adapter']} | {r['batch']} | {r['params']:,} | {r['steps']} | {r['ms_off']:.1f} | "
            f"{r['ms_on']:.1f} ({r['iqr_on'][0]:.1f}–{r['iqr_on'][1]:.1f}) | {r['time_ratio']:.2f} | "
            f"{r['paired']:.2f} ({r['paired_iqr'][0]:.2f}–{r['paired_iqr'][1]:.2f}) | {r['cpu_ratio']:.2f} | "
            f"{r['peak_mib_off']:.1f} → {r['peak_mib_on']:.1f} | {r['activation_mib_off']:.1f} → "
            f"{r['activation_mib_on']:.1f} | {r['activation_ratio']:.2f} | {r['conv_floor_mib_on']:.1f} | "
            f"{r['resident_mib_on']:.0f} "
            f"({r['state_mib_on']:.0f}) |")
    verdicts = []
    for r in result["rows"]:
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        verdicts.append(f"checkpointing ≤ {ACTIVATION_TARGET} × activation memory, {r['adapter']} [{r['size']}]: "
                        f"{met(r['activation_met'])} ({r['activation_ratio']:.2f}×)")
        verdicts.append(f"checkpointing ≤ {TIME_TARGET} × step time (per-round), {r['adapter']} [{r['size']}]: "
                        f"{met(r['time_met'])} ({r['paired']:.2f}×; ratio of medians {r['time_ratio']:.2f}×, of CPU time "
                        f"{r['cpu_ratio']:.2f}×; "
                        f"gradients equal to {r['grad_check']:.0e} relative)")
    return "\n".join([*lines, "", *verdicts])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (`--quick`: tiny shape, a short budget)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", choices=list(SIZES),
                   help="backbone sizes (default xlsr_300m: ~7 min and ~8 GB on 2 CPU cores; tiny with --quick)")
    p.add_argument("--adapters", nargs="+", default=list(ADAPTER_CFGS), choices=list(ADAPTER_CFGS))
    p.add_argument("--quick", action="store_true", help="tiny shape (unless --sizes), budget ≤ 60 s")
    timing_arguments(p, steps=10, warmup=1, budget=600, min_rounds=5)
    p.set_defaults(mem_jobs=None)
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = ["tiny"] if args.quick else ["xlsr_300m"]
    if args.quick:
        args.budget = min(args.budget, 60)
    if args.mem_jobs is None:  # one XLS-R child at a time: full fine-tuning alone needs ~8 GB
        args.mem_jobs = 1 if "xlsr_300m" in args.sizes else 2
    return args


def main() -> None:
    """Measure, print the table and verdicts (and write them to `--out`)."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    result = measure(args)
    header = (f"device {args.device}, threads {args.threads}, ERM + AdamW, median of ≤ {args.steps} round-robin rounds "
              f"(off, on) after a gradient check; CPU × = ratio of the median process CPU time per step. Peak step = "
              f"high-water mark above the just-built model over {args.mem_steps} Trainer-like step(s) (gradients and AdamW state included); activation = peak during one "
              f"more step (gradients kept allocated) − resident right after it (weights + gradients + AdamW state; in "
              f"brackets the bytes of those tensors alone); conv floor = peak of a no-grad forward of the conv feature "
              f"encoder alone, which no layer checkpointing lowers. Each memory figure from a fresh child process.")
    report = "\n".join([header, "", render(result)])
    emit(report, args.out, t_start)


if __name__ == "__main__":
    main()

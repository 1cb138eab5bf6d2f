#!/usr/bin/env python
"""Run every perf measurement and write one Markdown report (plus the raw figures as JSON beside it).

    python benchmarks/perf/report.py [--quick] [--sizes tiny] [--threads 1] [--out benchmarks/perf/REPORT.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import adapters  # noqa: E402
import algorithms  # noqa: E402
import profile_mldg  # noqa: E402
import report_detectors  # noqa: E402
import scale  # noqa: E402
import scoring  # noqa: E402
import step_time  # noqa: E402
import throughput  # noqa: E402

# Repeats per mode: the full report is what the targets are judged on; --quick keeps every
# section and table but with fewer, smaller repeats (a couple of minutes on 2 cores).
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "mldg_sizes": ["tiny", "small", "xlsr_300m"], "mldg_steps": 10, "mldg_warmup": 1, "mldg_budget": 900,
        "profile_steps": 10, "adapter_size": "xlsr_300m", "adapter_steps": 5, "adapter_warmup": 1,
        "infer_steps": 20, "adapter_budget": 300, "tp_size": "small", "tp_workers": [0, 1, 2], "tp_clips": 100,
        "tp_per_domain": 8, "tp_loader_steps": 6, "tp_model_steps": 2, "tp_rounds": 3, "sc_size": "small",
        "sc_utts": 96, "sc_batch": 32, "sc_rounds": 3, "scores": 1_000_000, "metric_rounds": 5,
        "scale_size": "xlsr_300m", "mem_jobs": 1,  # one XLS-R memory child at a time: full fine-tuning needs ~7 GB
        "alg_sizes": ["tiny", "small", "xlsr_300m"], "alg_steps": 5, "alg_warmup": 1, "alg_budget": 1200,
    },
    "quick": {
        "mldg_sizes": ["tiny", "small"], "mldg_steps": 5, "mldg_warmup": 1, "mldg_budget": 60,
        "profile_steps": 4, "adapter_size": "small", "adapter_steps": 4, "adapter_warmup": 1,
        "infer_steps": 8, "adapter_budget": 30, "tp_size": "tiny", "tp_workers": [0, 1], "tp_clips": 30,
        "tp_per_domain": 4, "tp_loader_steps": 3, "tp_model_steps": 1, "tp_rounds": 2, "sc_size": "tiny",
        "sc_utts": 24, "sc_batch": 8, "sc_rounds": 2, "scores": 1_000_000, "metric_rounds": 2,
        "scale_size": "xlsr_300m", "mem_jobs": 2,
        "alg_sizes": ["tiny"], "alg_steps": 3, "alg_warmup": 1, "alg_budget": 60,
    },
}
GPU_COUNTS = [1, 2, 4, 8]
SECTIONS = ("MLDG overhead", "LoRA vs full", "throughput", "evaluation", "scale notes", "algorithms", "detectors",
            "deployment")


class Report:
    """Markdown lines, the raw figures and every target with its verdict."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.data: dict[str, Any] = {}
        self.targets: list[dict[str, Any]] = []

    def add(self, *lines: str) -> None:
        """Append Markdown lines."""
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        """Append a Markdown table (first column left-aligned, the rest right-aligned)."""
        self.add("| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1))
        self.add(*("| " + " | ".join(r) + " |" for r in rows), "")

    def target(self, name: str, value: float, op: str, limit: float, digits: int = 2) -> bool:
        """Record a target (op: '≤', '≥' or '±' = |value − 1| ≤ limit); returns whether it is met."""
        met = {"≤": value <= limit, "≥": value >= limit, "±": abs(value - 1) <= limit}[op]
        self.targets.append({"name": name, "value": value, "op": op, "limit": limit, "met": met, "digits": digits})
        return met


def fmt_ms(ms: float) -> str:
    """Milliseconds with a precision that suits their size."""
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def machine(threads: int) -> dict[str, Any]:
    """What the figures were measured on."""
    import peft
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE, capture_output=True,
                               text=True, check=True).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "python": platform.python_version(),
            "threads": threads, "load_start": os.getloadavg(), "commit": commit}


def mldg_section(rep: Report, p: dict[str, Any], threads: int) -> None:
    """1. First-order MLDG vs ERM vs naive deep-copy MLDG, LoRA and full, every size; profiler breakdown."""
    args = step_time.parse_args(["--sizes", *p["mldg_sizes"], "--steps", str(p["mldg_steps"]), "--warmup",
                                 str(p["mldg_warmup"]), "--budget", str(p["mldg_budget"]), "--mem-jobs", str(p["mem_jobs"]),
                                 "--threads", str(threads), "--device", "cpu"])
    rows = step_time.measure(args)
    prof = profile_mldg.breakdown(p["mldg_sizes"][0], "lora", p["profile_steps"])
    rep.data["mldg"], rep.data["mldg_profile"] = rows, prof
    rep.add("## 1. MLDG overhead: first-order MLDG vs ERM vs naive deep-copy MLDG", "",
            f"One training step (`zero_grad → update → AdamW.step`) on 4 domains of seeded 1 s noise, the same "
            f"samples for every method; one shared model per (size, adapter); methods round-robin with the order "
            f"rotated every round, {args.warmup} warm-up round(s), median of ≤ {args.steps} (stops early past the "
            f"budget). `× ERM` = median ÷ ERM's median; `CPU` = the process's CPU time per step (its median), which "
            f"other jobs on the machine barely move, a cross-check of the wall-time ratio; `per-round` = median (IQR) of each round's step ÷ ERM's step "
            f"of that round; `× naive` = median ÷ naive deep-copy MLDG's median. Peak step memory: each (size, "
            f"adapter, method) in a fresh forkserver child, RSS high-water mark above the built model over "
            f"{args.mem_steps} steps (AdamW state included). Dropout, layerdrop and SpecAugment off.", "")
    rep.add(step_time.render(rows), "")
    worst = max(r["grad_check"] for r in rows)
    rep.add(f"Gradient check before timing (metadg MLDG vs naive MLDG on the same split, α = {step_time.CHECK_ALPHA}, "
            f"β = {step_time.CHECK_BETA}): max relative |Δgrad| = {worst:.1e} over all configurations.", "")
    for r in rows:
        if r["method"] == "mldg":
            limit = step_time.TARGETS[r["adapter"]]
            rep.target(f"MLDG ÷ ERM step time, {r['adapter']}, {r['size']}", r["ratio"], "≤", limit)
    ops = prof["ops"]
    rep.add(f"### Profile: {prof['size']} × LoRA (`torch.profiler`, self CPU time per step, mean of "
            f"{prof['steps']} steps, {threads} thread(s))", "")
    rep.table(["op", "ERM ms", "ERM calls", "MLDG ms", "MLDG calls", "MLDG − ERM ms"],
              [[f"`{o['op']}`", f"{o['erm_ms']:.2f}", f"{o['erm_calls']:.0f}", f"{o['mldg_ms']:.2f}",
                f"{o['mldg_calls']:.0f}", f"{o['mldg_ms'] - o['erm_ms']:+.2f}"] for o in ops]
              + [["all ops", f"{prof['erm_total_ms']:.2f}", "", f"{prof['mldg_total_ms']:.2f}", "",
                  f"{prof['mldg_total_ms'] - prof['erm_total_ms']:+.2f}"]])
    rep.add(f"Wall time of the profiled steps (profiler overhead included): ERM {prof['erm_wall_ms']:.1f} ms, MLDG "
            f"{prof['mldg_wall_ms']:.1f} ms ({prof['mldg_wall_ms'] / prof['erm_wall_ms']:.2f}×); self CPU time of all "
            f"ops: ERM {prof['erm_total_ms']:.1f} ms, MLDG {prof['mldg_total_ms']:.1f} ms. The frozen convolutional "
            f"feature encoder (`aten::mkldnn_convolution`) takes {prof['erm_conv_ms']:.1f} ms of ERM's step and "
            f"{prof['mldg_conv_ms']:.1f} ms of MLDG's.", "",
            "What limits MLDG on small models: it computes on the same samples as ERM, but in two passes (meta-train "
            "forward/backward on 3 domains, then the meta-test one on 1 domain at θ′), so every op is dispatched twice "
            "on smaller batches (the call counts above double) and the frozen feature encoder runs on 12 + 4 clips "
            "instead of 16. The virtual step (`functional_call` over the trainable tensors) does not show among the "
            "top ops. With one thread the smaller batches cost no more per clip; with several threads a 4-clip "
            "batch of a tiny model cannot keep them busy, so the second pass costs more than its share (tiny × LoRA "
            "1.17× ERM at 2 threads on a quiet machine, `README.md`). At larger sizes the ops are big enough either "
            "way. What would remove the rest is running the frozen encoder once over all "
            "domains (a model-side split into frozen prefix and trainable rest), outside this branch.", "")


def adapter_section(rep: Report, p: dict[str, Any], threads: int) -> None:
    """2. LoRA vs full fine-tuning: step time, peak memory, merged-LoRA inference."""
    size = p["adapter_size"]
    args = adapters.parse_args(["--sizes", size, "--variants", "lora", "full", "--steps", str(p["adapter_steps"]),
                                "--warmup", str(p["adapter_warmup"]), "--infer-steps", str(p["infer_steps"]),
                                "--budget", str(p["adapter_budget"]), "--mem-jobs", str(p["mem_jobs"]), "--threads", str(threads),
                                "--device", "cpu"])
    train_rows, infer_rows = adapters.measure(args)
    rep.data["adapters"] = {"train": train_rows, "inference": infer_rows}
    by = {r["variant"]: r for r in train_rows}
    rep.add(f"## 2. LoRA vs full fine-tuning ({size} shape)", "",
            f"ERM + AdamW over the adapter's trainable parameters, batch {train_rows[0]['batch']}; LoRA r = 16 on "
            "q/k/v/out_proj of every layer; both variants share the base weights; round-robin, median of the "
            "timed steps. Peak step memory includes gradients and AdamW state (fresh child per variant).", "")
    rep.table(["variant", "trainable params", "steps", "median ms/step", "IQR ms", "× full", "peak step MB", "mem × full"],
              [[r["variant"], f"{r['params']:,}", str(r["steps"]), fmt_ms(r["ms"]), f"{r['q1']:.1f}–{r['q3']:.1f}",
                f"{r['ms'] / by['full']['ms']:.2f}", f"{r['mib']:.1f}", f"{r['mib'] / by['full']['mib']:.2f}"]
               for r in train_rows])
    rep.target(f"LoRA ÷ full step time, {size}", by["lora"]["ms"] / by["full"]["ms"], "≤", adapters.LORA_TIME_TARGET)
    rep.target(f"LoRA ÷ full peak step memory, {size}", by["lora"]["mib"] / by["full"]["mib"], "≤",
               adapters.LORA_MEM_TARGET)
    plain = next(r for r in infer_rows if r["variant"] == "plain")
    rep.add(f"Inference, eval mode, `no_grad`, batch {plain['batch']}; merged = `adapter.merge` (peft "
            f"`merge_and_unload`), checked to have the plain model's module types and the unmerged logits "
            f"(max relative |Δ| {plain['merge_rel_diff']:.1e}). `per-round` = median (IQR) of each forward ÷ the "
            "plain forward of the same round (judged: the two medians can come from rounds under different load).", "")
    rep.table(["model", "forwards", "median ms/forward", "IQR ms", "× plain", "per-round × plain (IQR)"],
              [[r["variant"], str(r["steps"]), fmt_ms(r["ms"]), f"{r['q1']:.1f}–{r['q3']:.1f}",
                f"{r['ms'] / plain['ms']:.3f}", f"{r['paired']:.3f} ({r['paired_q1']:.3f}–{r['paired_q3']:.3f})"]
               for r in infer_rows])
    merged = next(r for r in infer_rows if r["variant"] == "lora_merged")
    rep.target(f"merged LoRA ÷ plain inference (per-round), {size}", merged["paired"], "±", adapters.MERGED_TOL, 3)


def algorithms_section(rep: Report, p: dict[str, Any], threads: int) -> None:
    """6. Every DG algorithm's step time and peak step memory ÷ ERM, LoRA, every size."""
    args = algorithms.parse_args(["--sizes", *p["alg_sizes"], "--steps", str(p["alg_steps"]), "--warmup",
                                  str(p["alg_warmup"]), "--budget", str(p["alg_budget"]), "--mem-jobs",
                                  str(p["mem_jobs"]), "--threads", str(threads), "--device", "cpu"])
    rows = algorithms.measure(args)
    rep.data["algorithms"] = rows
    rep.add("## 6. The DG algorithm zoo: step time and memory ÷ ERM (LoRA)", "",
            f"One Trainer step (`zero_grad → update → AdamW.step` unless the algorithm owns its step → `after_step`) "
            f"on 4 domains × {step_time.per_domain(args)} × 1 s of seeded noise, the zoo's settings "
            f"(`benchmarks/zoo_*.yaml`); one shared LoRA model per size; every algorithm once per round, the order "
            f"rotated, {args.warmup} warm-up round(s), median of ≤ {args.steps} rounds (fewer past the budget). "
            "Peak step memory: each (size, algorithm) in a fresh forkserver child, as in section 1.", "")
    rep.add(algorithms.render(rows), "")
    for r in rows:
        if r["target"]:
            rep.target(f"{r['algorithm']} ÷ ERM step time, lora, {r['size']}", r["ratio"], "≤", r["target"])


def throughput_section(rep: Report, p: dict[str, Any], threads: int) -> None:
    """3. Loader clips/s vs model clips/s, and end-to-end training, per worker count."""
    args = throughput.parse_args(["--size", p["tp_size"], "--workers", *map(str, p["tp_workers"]), "--clips",
                                  str(p["tp_clips"]), "--per-domain", str(p["tp_per_domain"]), "--loader-steps",
                                  str(p["tp_loader_steps"]), "--model-steps", str(p["tp_model_steps"]), "--rounds",
                                  str(p["tp_rounds"])])
    res = throughput.measure(args)
    rep.data["throughput"] = res
    model = res["model"]["clips_s"]
    rep.add("## 3. Training throughput: data loader vs model step", "",
            f"{args.clips} FLAC clips (16 kHz, 3.5–4.5 s) indexed by the `list` reader; `DomainBatcher` with "
            f"{res['domains']} domains × {res['per_domain']} clips per step ({res['clips_per_step']} clips), crop "
            "64,600 samples, RawBoost algo 5, each worker count through `DomainBatcher.iterate(num_workers)`. "
            f"Model step: {res['size']} backbone, LoRA, first-order MLDG, AdamW, {threads} thread(s), on one fixed "
            "batch of the same shape. Blocks round-robin (order rotated), a fresh loader per block so idle "
            f"workers never prefetch during another block; median (IQR) of {res['rounds']} rounds.", "")
    rows = [["model step alone", f"{model:.1f}", f"{res['model']['q1']:.1f}–{res['model']['q3']:.1f}", "1.00"]]
    for nw in args.workers:
        for kind, label in (("loader", "loader alone"), ("e2e", "loader + model step (end to end)")):
            r = res[f"{kind}/{nw}"]
            rows.append([f"{label}, num_workers = {nw}", f"{r['clips_s']:.1f}", f"{r['q1']:.1f}–{r['q3']:.1f}",
                         f"{r['clips_s'] / model:.2f}"])
    rep.table(["setting", "clips/s", "IQR", "× model clips/s"], rows)
    default = res["default_workers"]
    margin = res[f"loader/{default}"]["clips_s"] / model if f"loader/{default}" in res else float("nan")
    rep.target(f"loader ÷ model clips/s at the default num_workers = {default} ({res['size']} model, CPU)",
               margin, "≥", throughput.TARGET)
    meets = [nw for nw in args.workers if res[f"loader/{nw}"]["clips_s"] / model >= throughput.TARGET]
    rep.add(("num_workers meeting ≥ 3× here: " + ", ".join(map(str, meets)) + "." if meets else
             "No measured num_workers reaches 3× here.") + " A CPU model step is far slower than a GPU one; "
            "section 5 sizes the loader workers for a GPU step.", "")


def scoring_section(rep: Report, p: dict[str, Any], threads: int) -> None:
    """4. Whole-utterance scoring throughput, batched vs unbatched; EER and minDCF on 10⁶ scores."""
    args = scoring.parse_args(["--size", p["sc_size"], "--utts", str(p["sc_utts"]), "--batch-size", str(p["sc_batch"]),
                               "--rounds", str(p["sc_rounds"])])
    s = scoring.measure_scoring(args)
    m = scoring.measure_metrics(p["scores"], p["metric_rounds"])
    rep.data["scoring"], rep.data["metrics"] = s, m
    un = s["unbatched"]["utts_s"]
    rep.add("## 4. Evaluation", "",
            f"`score_utterances` on {s['utts']} in-memory utterances, log-uniform {s['min_s']:g}–{s['max_s']:g} s "
            f"({s['audio_s']:.0f} s of audio), {s['size']} backbone, eval mode, {threads} thread(s). Batched: "
            f"batch_size {s['batch_size']}, each window of 8 × batch_size utterances sorted by length and cut into "
            "batches whose longest segment is ≤ 1.1 × their shortest; scores returned in input order. Unbatched: "
            f"batch_size 1. Round-robin, median (IQR) of {s['rounds']} passes. Batched vs unbatched scores: max "
            f"|Δ| = {s['max_abs_diff']:.1e}.", "")
    rep.table(["scoring", "utt/s", "IQR", "× unbatched", "batches", "padding share"],
              [["batched, length-sorted", f"{s['batched']['utts_s']:.2f}",
                f"{s['batched']['q1']:.2f}–{s['batched']['q3']:.2f}", f"{s['batched']['utts_s'] / un:.2f}",
                str(s["batches_sorted"]), f"{100 * s['pad_sorted']:.1f} %"],
               ["unbatched", f"{un:.2f}", f"{s['unbatched']['q1']:.2f}–{s['unbatched']['q3']:.2f}", "1.00",
                str(s["utts"]), "0.0 %"]])
    rep.add(f"Batches in arrival order (no sorting) would pad {100 * s['pad_arrival']:.1f} % of what the model "
            "sees. On CPU a single utterance already fills the cores, so batching mainly avoids padding waste "
            "here; its gain is on a GPU, where small batches leave the device idle.", "")
    rep.table(["metric on scores", "value", "median ms", "IQR ms"],
              [[f"{name} ({m['n']:,} scores, 10 % bona fide)", f"{m[key]['value']:.5f}", f"{m[key]['ms']:.0f}",
                f"{m[key]['q1']:.0f}–{m[key]['q3']:.0f}"] for key, name in (("eer", "EER"), ("min_dcf", "minDCF"))])


def scale_section(rep: Report, p: dict[str, Any]) -> None:
    """5. FLOPs per clip and the cost of an ASVspoof 2019 LA epoch on CPU (measured rate) and GPUs (assumed rate)."""
    size = p["scale_size"]
    flops = {a: scale.step_flops(size, a, 1, scale.CROP) for a in ("lora", "full")}
    achieved = []
    for r in rep.data.get("mldg", []):
        if r["method"] == "erm":
            n = step_time.per_domain()
            f = scale.step_flops(r["size"], r["adapter"], step_time.N_DOMAINS * n, step_time.SAMPLES)
            achieved.append({"size": r["size"], "adapter": r["adapter"], "gflop": f["train"] / 1e9, "ms": r["ms"],
                             "gflops_s": f["train"] / 1e9 / (r["ms"] / 1e3)})
    loader = rep.data.get("throughput", {}).get("loader/0", {}).get("clips_s")
    gpu = {a: [scale.epoch_on_gpus(flops[a]["train"], flops[a]["trainable"], n) for n in GPU_COUNTS] for a in flops}
    rep.data["scale"] = {"flops": flops, "cpu_achieved": achieved, "gpu": gpu, "loader_clips_s": loader}
    rep.add("## 5. Scale notes: an ASVspoof 2019 LA training epoch", "",
            f"FLOPs counted with `torch.utils.flop_counter.FlopCounterMode` on the meta device at {size} shape, one "
            f"{scale.CROP:,}-sample (4 s) clip, ERM step = forward + backward (first-order MLDG does the same work "
            f"on the same samples plus an O(#trainable) virtual step). Epoch: {scale.LA_TRAIN_UTTS:,} training "
            f"utterances, one crop each, recipe batch {scale.RECIPE_BATCH} per GPU.", "")
    rep.table(["adapter", "trainable params", "forward GFLOP/clip", "train step GFLOP/clip", "epoch PFLOP"],
              [[a, f"{f['trainable']:,.0f}", f"{f['fwd'] / 1e9:.1f}", f"{f['train'] / 1e9:.1f}",
                f"{f['train'] * scale.LA_TRAIN_UTTS / 1e15:.2f}"] for a, f in flops.items()])
    if achieved:
        rep.add("Measured CPU rate (ERM steps of section 1, FLOPs counted at their shape) and what an epoch at "
                f"{size} shape would take at that rate:", "")
        rows = []
        for a in achieved:
            epoch = flops[a["adapter"]]["train"] * scale.LA_TRAIN_UTTS / (a["gflops_s"] * 1e9)
            rows.append([f"{a['size']} × {a['adapter']}", f"{a['gflop']:.1f}", fmt_ms(a["ms"]), f"{a['gflops_s']:.1f}",
                         f"{epoch / 3600:.1f}"])
        rep.table(["measured step", "GFLOP/step", "median ms/step", "achieved GFLOP/s", f"{size} epoch h at that rate"], rows)
    rep.add(f"GPU assumption: {scale.GPU_NAME}, {scale.GPU_PEAK_TFLOPS:.0f} dense bf16 TFLOP/s at "
            f"{scale.MFU:.0%} utilisation; DDP all-reduces the fp32 gradients of the trainable parameters once per "
            f"step at {scale.ALLREDUCE_GBPS:.0f} GB/s ring bus bandwidth (NVLink, one node), counted without "
            "overlap with the backward pass (an upper bound). Per-GPU batch stays 14, so N GPUs take 1/N of the "
            "steps. Loader workers per GPU for a 3× margin = 3 × the GPU's clips/s ÷ one worker's clips/s "
            f"({'%.1f' % loader if loader else 'not measured'}, the single-process loader rate of section 3).", "")
    rows = []
    for a, ests in gpu.items():
        for e in ests:
            workers = str(math.ceil(3 * e["clips_s_per_gpu"] / loader)) if loader else "–"
            rows.append([a, str(e["gpus"]), f"{e['steps']:,}", f"{1e3 * e['compute_s']:.1f}", f"{1e3 * e['comm_s']:.2f}",
                         f"{e['epoch_s']:.0f}", f"{e['clips_s_per_gpu']:.0f}", workers])
    rep.table(["adapter", "GPUs", "steps/epoch", "compute ms/step", "all-reduce ms/step", "epoch s",
               "clips/s per GPU", "loader workers per GPU for 3×"], rows)


def render(rep: Report, info: dict[str, Any], mode: str, argv: list[str], seconds: float) -> str:
    """The whole report: header, machine, target summary, then the sections."""
    head = ["# metadg performance report", "",
            f"Date: {info['date']} · mode: {mode} · command: `python benchmarks/perf/report.py {' '.join(argv)}`"
            f" · runtime {seconds:.0f} s · commit {info['commit']}", "",
            f"Machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable), torch {info['torch']} "
            f"(threads pinned to {info['threads']}), transformers {info['transformers']}, peft {info['peft']}, "
            f"Python {info['python']}; load average at start {info['load_start'][0]:.2f}, at end "
            f"{info['load_end'][0]:.2f}. Ratios compare runs interleaved round-robin in one process, so background "
            "load hits both sides alike; compare ratios across reports, not absolute times.", "",
            "## Targets", ""]
    rows = []
    for t in rep.targets:
        limit = f"1 ± {t['limit']:.2f}" if t["op"] == "±" else f"{t['op']} {t['limit']:.2f}"
        rows.append([t["name"], f"{t['value']:.{t['digits']}f}", limit, "met" if t["met"] else "not met"])
    summary = Report()
    summary.table(["target", "measured", "limit", "verdict"], rows)
    return "\n".join(head + summary.lines + rep.lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, smaller repeats; no XLS-R step timing (a couple of minutes)")
    p.add_argument("--sizes", choices=list(step_time.SIZES), help="use this one backbone size in every section")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: steady on a shared machine; the cores' count on a quiet one)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, help="run only these sections (default: all)")
    p.add_argument("--out", default=str(HERE / "REPORT.md"), help="Markdown report; the figures go to the same name .json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run every section and write the report."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    mode = "quick" if args.quick else "full"
    p = dict(PRESETS[mode])
    if args.sizes:
        p.update(mldg_sizes=[args.sizes], adapter_size=args.sizes, tp_size=args.sizes, sc_size=args.sizes,
                 scale_size=args.sizes, alg_sizes=[args.sizes])
        mode += f", every size {args.sizes}"
    info = machine(args.threads)
    rep = Report()
    for name, section in (("MLDG overhead", lambda: mldg_section(rep, p, args.threads)),
                          ("LoRA vs full", lambda: adapter_section(rep, p, args.threads)),
                          ("throughput", lambda: throughput_section(rep, p, args.threads)),
                          ("evaluation", lambda: scoring_section(rep, p, args.threads)),
                          ("scale notes", lambda: scale_section(rep, p)),
                          ("algorithms", lambda: algorithms_section(rep, p, args.threads)),
                          ("detectors", lambda: report_detectors.detectors_section(rep, args.quick, args.threads)),
                          ("deployment", lambda: report_detectors.deployment_section(rep, args.quick, args.threads))):
        if args.sections and name not in args.sections:
            continue
        print(f"[{time.perf_counter() - t0:5.0f} s] {name}", flush=True)
        section()
    info["load_end"] = os.getloadavg()
    text = render(rep, info, mode, argv, time.perf_counter() - t0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    figures = {"machine": info, "mode": mode, "presets": p, "targets": rep.targets, **rep.data}
    out.with_suffix(".json").write_text(json.dumps(figures, indent=1, default=str), encoding="utf-8")
    print(text)
    print(f"wrote {out} and {out.with_suffix('.json')} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

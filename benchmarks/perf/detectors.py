#!/usr/bin/env python
"""From-scratch detectors: step time and peak step memory beside the SSL encoders, and AASIST ÷ the public model.

    python benchmarks/perf/detectors.py [--batch 24] [--seconds 4] [--steps 2] [--out detectors.md]
    python benchmarks/perf/detectors.py --quick        # batch 2 × 1 s, one timed step: checks it runs

A step is the Trainer's: zero_grad → ERM update → AdamW.step, full fine-tuning, random 4 s crops,
batch 24, torch pinned to `--threads` (default 1). Memory: each model in a fresh forkserver child.

The framework cost: metadg's AASIST-L step ÷ the same step through the published model, written
from its state-dict layout with functional ops (the test-only transcription in
tests/test_import_aasist.py), on the same weights and batch. Both run in eval mode (BatchNorm on
running statistics, no dropout), so they compute the same function — asserted before timing — and
the ratio is framework overhead alone. Interleaved round-robin; target ≤ 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests"))  # the transcription of the published AASIST
import step_time  # noqa: E402

from metadg.algorithms.erm import ERM  # noqa: E402
from metadg.config import StrictModel, validate_plugin  # noqa: E402
from metadg.engine.batch import Batch  # noqa: E402
from metadg.models import build_model  # noqa: E402
from metadg.registry import HEADS, MODELS  # noqa: E402

SR = 16000
FRAMEWORK_TARGET = 1.05
#: label → (backbone config, head config); the SSL rows are step_time's tiny and small encoders
DETECTORS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "AASIST": ({"name": "aasist_raw", "preset": "AASIST"}, {"name": "linear", "dropout": 0.5}),
    "AASIST-L": ({"name": "aasist_raw", "preset": "AASIST-L"}, {"name": "linear", "dropout": 0.5}),
    "RawNet2": ({"name": "rawnet2"}, {"name": "linear"}),
    "LFCC-LCNN": ({"name": "lcnn"}, {"name": "linear"}),
    "SSL tiny": ({"name": "ssl", "preset": "tiny", "config": step_time.NO_DROPOUT}, {"name": "linear"}),
    "SSL small": ({"name": "ssl", "preset": "tiny", "config": {**step_time.SIZES["small"]["config"],
                                                                **step_time.NO_DROPOUT}}, {"name": "linear"}),
}


def build(label: str) -> nn.Module:
    """The detector `label`, seeded, every parameter trainable (full fine-tuning), train mode."""
    torch.manual_seed(0)
    backbone, head = DETECTORS[label]
    return build_model(validate_plugin(MODELS, backbone, "b"), validate_plugin(HEADS, head, "h"), 2).train()


def batch(args: argparse.Namespace) -> dict[str, Batch]:
    """One domain batch of `--batch` random crops of `--seconds` (a step's cost does not depend on domains)."""
    g = torch.Generator().manual_seed(0)
    n, samples = args.batch, int(args.seconds * SR)
    return {"all": Batch(torch.randn(n, samples, generator=g) * 0.1, torch.randint(0, 2, (n,), generator=g))}


class Step:
    """ERM + AdamW over every parameter of `model`: the Trainer's full fine-tuning step."""

    def __init__(self, model: nn.Module) -> None:
        """Build the algorithm and the optimiser."""
        params = dict(model.named_parameters())
        self.algo = ERM(StrictModel(), model, params, nn.functional.cross_entropy, seed=0)
        self.opt = torch.optim.AdamW(params.values(), lr=1e-4)

    def __call__(self, batches: dict[str, Batch]) -> float:
        """One step; returns seconds."""
        return step_time.train_step(self.algo, self.opt, batches, "cpu")


def memory_job(label: str, args: argparse.Namespace) -> float:
    """Peak step memory (MiB, AdamW state included) of `label`, in a fresh child process."""
    torch.set_num_threads(args.threads)
    step, batches = Step(build(label)), batch(args)
    return step_time.peak_step_mib(lambda: step(batches), 2, "cpu")


def time_models(args: argparse.Namespace) -> dict[str, list[float]]:
    """Round-robin step times (s) of every detector, one model each, order rotated per round."""
    labels = list(args.models)
    steps = {label: Step(build(label)) for label in labels}
    batches = batch(args)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(args.warmup + args.steps):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            t = steps[label](batches)
            if i >= args.warmup:
                times[label].append(t)
        print(f"round {i + 1}/{args.warmup + args.steps} done", flush=True)
    return times


class PublishedStep:
    """The published AASIST's training step: functional forward on its state dict, CE loss, backward, AdamW."""

    def __init__(self, state: dict[str, torch.Tensor], preset: str) -> None:
        """Trainable copies of the floating-point tensors (BatchNorm statistics stay fixed, as in eval mode)."""
        self.preset = preset
        self.state = {k: v.clone().requires_grad_(v.is_floating_point() and "running_" not in k) for k, v in state.items()}
        self.opt = torch.optim.AdamW([v for v in self.state.values() if v.requires_grad], lr=1e-4)

    def logits(self, wave: torch.Tensor) -> torch.Tensor:
        """The transcription's forward."""
        from test_import_aasist import reference_logits

        return reference_logits(self.state, wave, self.preset)

    def __call__(self, batches: dict[str, Batch]) -> float:
        """One step; returns seconds."""
        b = batches["all"]
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(self.logits(b.inputs), b.labels).backward()
        self.opt.step()
        return time.perf_counter() - t0


def framework_ratio(args: argparse.Namespace, preset: str = "AASIST-L") -> dict[str, Any]:
    """metadg AASIST step ÷ published-model step on the same weights and batch (both eval mode), round-robin."""
    from metadg.importers.aasist import metadg_key
    from test_import_aasist import published_state

    state = published_state(preset)
    model = build(preset).eval()
    model.load_state_dict({metadg_key(k): v for k, v in state.items()})
    ours, theirs = Step(model), PublishedStep(state, preset)
    batches = {"all": batch(argparse.Namespace(batch=args.ratio_batch, seconds=args.seconds))["all"]}
    with torch.no_grad():
        torch.testing.assert_close(model(batches["all"].inputs), theirs.logits(batches["all"].inputs), rtol=1e-4, atol=1e-5)
    times: dict[str, list[float]] = {"metadg": [], "published": []}
    runs = {"metadg": ours, "published": theirs}
    for i in range(args.warmup + args.ratio_steps):
        for name in (("metadg", "published") if i % 2 == 0 else ("published", "metadg")):
            t = runs[name](batches)
            if i >= args.warmup:
                times[name].append(t)
    ratios = [a / b for a, b in zip(times["metadg"], times["published"])]
    return {"preset": preset, "batch": args.ratio_batch, "metadg_s": statistics.median(times["metadg"]),
            "published_s": statistics.median(times["published"]), "ratio": statistics.median(ratios),
            "ratio_iqr": step_time.quartiles(ratios)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Memory in fresh children, then round-robin step times, then the framework ratio."""
    mem = step_time.in_fresh_processes(memory_job, list(args.models), args)
    times = time_models(args)
    rows = []
    for label in args.models:
        model = build(label)
        rows.append({"model": label, "params": sum(p.numel() for p in model.parameters()),
                     "step_s": statistics.median(times[label]), "step_iqr": step_time.quartiles(times[label]),
                     "steps": len(times[label]), "mib": mem[label]})
    return {"batch": args.batch, "seconds": args.seconds, "threads": args.threads, "rows": rows,
            "framework": framework_ratio(args)}


def table(res: dict[str, Any]) -> list[str]:
    """Markdown lines: one row per detector, then the framework-cost verdict."""
    lines = [f"Batch {res['batch']} × {res['seconds']:g} s crops, full fine-tuning (ERM + AdamW), {res['threads']} thread(s).",
             "", "| model | parameters | step (median) | IQR | steps | peak step memory |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lo, hi = r["step_iqr"]
        lines.append(f"| {r['model']} | {r['params']:,} | {r['step_s']:.2f} s | {lo:.2f}–{hi:.2f} s | {r['steps']} | "
                     f"{r['mib']:,.0f} MiB |")
    f = res["framework"]
    verdict = "met" if f["ratio"] <= FRAMEWORK_TARGET else "not met"
    lines += ["", f"metadg {f['preset']} step ÷ the published model's (same weights, batch {f['batch']}, eval mode): "
              f"**{f['ratio']:.3f}** (IQR {f['ratio_iqr'][0]:.3f}–{f['ratio_iqr'][1]:.3f}; {f['metadg_s']:.2f} s vs "
              f"{f['published_s']:.2f} s) — target ≤ {FRAMEWORK_TARGET}: {verdict}"]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(DETECTORS), choices=list(DETECTORS))
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=2, help="timed rounds (AASIST takes about a minute a step on one thread)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--ratio-batch", type=int, default=4, help="batch of the metadg ÷ published AASIST-L comparison")
    p.add_argument("--ratio-steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--mem-jobs", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="batch 2 × 1 s, one timed round: checks that it runs")
    p.add_argument("--out", help="also write the table to this markdown file")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.seconds, args.steps, args.ratio_batch, args.ratio_steps = 2, 1.0, 1, 1, 2
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    step_time.emit("\n".join(table(measure(args))), args.out)


if __name__ == "__main__":
    main()

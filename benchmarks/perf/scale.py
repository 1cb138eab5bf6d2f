#!/usr/bin/env python
"""FLOPs of a training step (counted on the meta device) and what an ASVspoof 2019 LA epoch costs on GPUs."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import build, trainable  # noqa: E402

# ASVspoof 2019 LA train set and the SSL-AASIST recipe (shared/REFERENCE.md).
LA_TRAIN_UTTS, RECIPE_BATCH, CROP = 25_380, 14, 64_600
# Assumptions, stated in the report: H100 SXM dense bf16 peak, the share of it a real step achieves,
# and the NCCL ring all-reduce bus bandwidth over NVLink within one node.
GPU_NAME, GPU_PEAK_TFLOPS, MFU, ALLREDUCE_GBPS = "H100 SXM", 989.0, 0.35, 300.0


def step_flops(size: str, adapter: str, batch: int, samples: int) -> dict[str, float]:
    """Forward and forward + backward FLOPs of one ERM step on `batch` × `samples`, and the trainable count."""
    with torch.device("meta"):  # shapes only: no weights are allocated, nothing runs
        model = build(size, adapter, "meta")
    x = torch.zeros(batch, samples, device="meta")
    with FlopCounterMode(display=False) as counter:
        logits = model(x)
        fwd = counter.get_total_flops()
        torch.nn.functional.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device="meta")).backward()
    n = sum(p.numel() for p in trainable(model).values())
    return {"fwd": float(fwd), "train": float(counter.get_total_flops()), "trainable": float(n)}


def epoch_on_gpus(train_flops_per_clip: float, trainable_params: float, n_gpus: int,
                  per_gpu_batch: int = RECIPE_BATCH) -> dict[str, float]:
    """Seconds per LA epoch on `n_gpus` with DDP: compute at MFU × peak, plus one un-overlapped fp32 gradient all-reduce per step."""
    steps = math.ceil(LA_TRAIN_UTTS / (per_gpu_batch * n_gpus))
    compute = per_gpu_batch * train_flops_per_clip / (GPU_PEAK_TFLOPS * 1e12 * MFU)
    # Ring all-reduce moves 2(N−1)/N of the gradient bytes through each GPU's link.
    comm = 0.0 if n_gpus == 1 else 2 * (n_gpus - 1) / n_gpus * 4 * trainable_params / (ALLREDUCE_GBPS * 1e9)
    return {"gpus": n_gpus, "steps": steps, "compute_s": compute, "comm_s": comm, "step_s": compute + comm,
            "epoch_s": steps * (compute + comm), "clips_s_per_gpu": per_gpu_batch / (compute + comm)}


def main() -> None:
    """Print FLOPs per clip at XLS-R shape and the epoch estimates."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="xlsr_300m")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    args = p.parse_args()
    for adapter in ("lora", "full"):
        f = step_flops(args.size, adapter, 1, CROP)
        print(f"{args.size}/{adapter}: forward {f['fwd'] / 1e9:.1f} GFLOP, train step {f['train'] / 1e9:.1f} GFLOP per clip")
        for n in args.gpus:
            e: dict[str, Any] = epoch_on_gpus(f["train"], f["trainable"], n)
            print(f"  {n} × {GPU_NAME}: {e['steps']} steps × {1e3 * e['step_s']:.1f} ms = {e['epoch_s']:.0f} s per epoch")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""torch.profiler breakdown of one ERM step vs one first-order MLDG step: where MLDG's extra time goes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import build, make_algo, make_batches, per_domain, train_step, trainable  # noqa: E402


def op_times(size: str, adapter: str, steps: int, device: str = "cpu") -> dict[str, dict[str, tuple[float, float]]]:
    """{method: {op: (self CPU ms per step, calls per step)}} for ERM and MLDG, profiled on one shared model."""
    model = build(size, adapter, device)
    batches = make_batches(device, per_domain())
    opt = torch.optim.AdamW(trainable(model).values(), lr=1e-4)
    runs = {m: make_algo(m, model) for m in ("erm", "mldg")}
    for _ in range(2):  # warm-up: allocator, kernels, AdamW state
        for algo in runs.values():
            train_step(algo, opt, batches, device)
    out = {}
    for method, algo in runs.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = sum(train_step(algo, opt, batches, device) for _ in range(steps))
        out[method] = {e.key: (e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in prof.key_averages()}
        out[method]["wall"] = (1e3 * wall / steps, 1.0)  # includes the profiler's own overhead
    return out


def breakdown(size: str, adapter: str, steps: int, top: int = 8) -> dict[str, Any]:
    """Totals per method and the `top` ops by |MLDG − ERM| self CPU time, per step."""
    times = op_times(size, adapter, steps)
    (erm_wall, _), (mldg_wall, _) = times["erm"].pop("wall"), times["mldg"].pop("wall")
    erm, mldg = times["erm"], times["mldg"]
    keys = sorted(set(erm) | set(mldg), key=lambda k: -abs(mldg.get(k, (0, 0))[0] - erm.get(k, (0, 0))[0]))
    ops = [{"op": k, "erm_ms": erm.get(k, (0, 0))[0], "erm_calls": erm.get(k, (0, 0))[1],
            "mldg_ms": mldg.get(k, (0, 0))[0], "mldg_calls": mldg.get(k, (0, 0))[1]} for k in keys[:top]]
    conv = "aten::mkldnn_convolution"
    return {"size": size, "adapter": adapter, "steps": steps, "erm_wall_ms": erm_wall, "mldg_wall_ms": mldg_wall,
            "erm_total_ms": sum(v[0] for v in erm.values()), "mldg_total_ms": sum(v[0] for v in mldg.values()),
            "erm_conv_ms": erm.get(conv, (0, 0))[0], "mldg_conv_ms": mldg.get(conv, (0, 0))[0], "ops": ops}


def main() -> None:
    """Print the breakdown for one size × adapter."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="tiny")
    p.add_argument("--adapter", default="lora")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    b = breakdown(args.size, args.adapter, args.steps)
    print(f"self CPU ms per step: ERM {b['erm_total_ms']:.1f}, MLDG {b['mldg_total_ms']:.1f}; "
          f"wall ms per step: ERM {b['erm_wall_ms']:.1f}, MLDG {b['mldg_wall_ms']:.1f}")
    for o in b["ops"]:
        print(f"{o['op'][:60]:60s} ERM {o['erm_ms']:7.2f} ms ×{o['erm_calls']:5.0f}   "
              f"MLDG {o['mldg_ms']:7.2f} ms ×{o['mldg_calls']:5.0f}")


if __name__ == "__main__":
    main()

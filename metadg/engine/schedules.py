"""Learning-rate schedules after warm-up: a factor of the base learning rate per step."""

from __future__ import annotations

import math

from metadg.registry import SCHEDULES


@SCHEDULES.register("constant")
def constant(progress: float) -> float:
    """Keep the learning rate."""
    return 1.0


@SCHEDULES.register("cosine")
def cosine(progress: float) -> float:
    """Half a cosine from the learning rate down to zero at the last step."""
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def lr_factor(name: str, step: int, warmup_steps: int, steps: int) -> float:
    """Linear warm-up, then the named schedule over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return SCHEDULES.get(name)((step - warmup_steps) / max(1, steps - warmup_steps))

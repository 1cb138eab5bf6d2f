"""Shared by Fish and Reptile: plain SGD on a copy of the trainable tensors, then θ ← θ + ε(θ̃ − θ)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from metadg.algorithms.base import Algorithm
from metadg.engine.batch import Batch

Weights = dict[str, torch.Tensor]


def inner_sgd(algo: Algorithm, batches: Sequence[Batch], lr: float) -> tuple[Weights, list[float]] | None:
    """SGD steps from the live weights, one per batch in order, on a tensor copy θ̃.

    Returns (θ̃, the loss of each step), or None as soon as a loss or gradient is not
    finite. The live parameters and the model are never written: the loss is taken at
    θ̃ through `functional_call`, and only the trainable tensors are copied (the frozen
    backbone is shared by reference).
    """
    theta = {n: p.detach().clone() for n, p in algo.params.items()}
    losses: list[float] = []
    for batch in batches:
        leaves = {n: t.requires_grad_() for n, t in theta.items()}
        loss = algo.loss(batch, leaves)
        grads = list(torch.autograd.grad(loss, list(leaves.values()), allow_unused=True))
        # The loss travels with the gradients through the rank-mean, so every data-parallel
        # rank takes the same inner step on the global batch and reaches the same skip decision.
        *grads, loss_mean = algo.reduce([*grads, loss.detach().reshape(1)])
        if not bool(loss_mean.isfinite().all()) or not all(g.isfinite().all() for g in grads if g is not None):
            return None
        losses.append(float(loss_mean))
        with torch.no_grad():
            theta = {n: t.detach() if g is None else t.detach() - lr * g for (n, t), g in zip(leaves.items(), grads)}
    return theta, losses


def mean_weights(points: Sequence[Weights]) -> Weights:
    """The element-wise mean of several θ̃ (batched Reptile averages its tasks' end points)."""
    if len(points) == 1:
        return points[0]
    return {n: torch.stack([p[n] for p in points]).mean(0) for n in points[0]}


def outer_step(params: Mapping[str, torch.nn.Parameter], target: Weights, meta_lr: float) -> None:
    """θ ← θ + ε(θ̃ − θ) in place; lerp gives θ̃ exactly at ε = 1."""
    with torch.no_grad():
        for n, p in params.items():
            p.lerp_(target[n].to(p.dtype), meta_lr)


def skipped(**extra: float) -> dict[str, float]:
    """Metrics of a step that was not taken: a non-finite loss makes the Trainer count the skip."""
    return {"loss": math.nan, **extra}

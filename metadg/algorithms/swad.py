"""SWAD (Cha et al. 2021): dense averaging of every step's weights inside a loss valley found on dev.

Each evaluation closes a *segment*: sum and count of the weights of every step since the previous one,
with the dev loss at its end. Until the window starts the last `n_converge` segments wait in a queue; it
starts when the oldest of a full queue has the lowest loss (the loss stopped improving), at the first
step of that segment (as LossValley does). That loss is the minimum; an evaluation above
(1 + tolerance_ratio)·minimum counts against the window, `n_tolerance` of them in a row close it and are
left out. A run above the threshold still open when training ends is left out too (as LossValley's final
model); if the window never started, the final model averages the queued segments (the steps of the
last `n_converge` evaluations). The reference LossValley sets the threshold from the mean of the
`n_converge` losses at the start (here: the minimum), averages segment averages and counts the start
segment twice (here every step of the window weighs the same).
BatchNorm statistics gathered along the way do not fit averaged weights: `final_weights` recomputes
them on the inputs of the last `bn_batches` training draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn

from metadg.algorithms.ema import WeightAveraging, WrapperConfig, to_device
from metadg.algorithms.base import LossFn
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class SWADConfig(WrapperConfig):
    """The loss-valley rule on the dev loss, and BatchNorm recomputation."""

    n_converge: int = Field(3, ge=1, description="evaluations without improvement that start the window")
    n_tolerance: int = Field(6, ge=1, description="evaluations in a row above the threshold that end the window")
    tolerance_ratio: float = Field(0.3, ge=0, description="the window ends above (1 + ratio)·the minimum dev loss")
    bn_batches: int = Field(4, ge=1, description="last training draws kept to recompute BatchNorm statistics")


@dataclass
class Segment:
    """Sum and count of the weights of steps start..end, and the dev loss after `end`."""

    sum: dict[str, torch.Tensor] | None = None
    count: int = 0
    start: int = 0
    end: int = 0
    loss: float = math.inf
    evals: int = 0  # evaluations merged in (the run length of the pending segment)

    def _accumulate(self, tensors: Mapping[str, torch.Tensor], start: int) -> None:
        with torch.no_grad():
            if self.sum is None:
                self.sum, self.start = {n: t.detach().to(torch.float32, copy=True) for n, t in tensors.items()}, start
            else:  # one fused kernel per dtype, not one per tensor (LoRA has hundreds of small ones)
                torch._foreach_add_(list(self.sum.values()), [tensors[n].detach().float() for n in self.sum])

    def add(self, weights: Mapping[str, torch.Tensor], step: int) -> None:
        """One more step's weights."""
        self._accumulate(weights, step)
        self.count, self.end = self.count + 1, step

    def merge(self, other: Segment) -> None:
        """Append the steps of `other` (a later segment); its loss becomes this one's."""
        if other.count:
            self._accumulate(other.sum, other.start)
            self.count, self.end, self.loss = self.count + other.count, other.end, other.loss
            self.evals += 1

    def state(self) -> dict[str, Any]:
        return {"sum": self.sum, "count": self.count, "start": self.start, "end": self.end,
                "loss": self.loss if math.isfinite(self.loss) else None, "evals": self.evals}  # JSON has no inf

    @classmethod
    def restore(cls, state: Mapping[str, Any], params: Mapping[str, nn.Parameter]) -> Segment:
        return cls(**{**state, "sum": to_device(state["sum"], params), "loss": finite_or_inf(state["loss"])})


def finite_or_inf(loss: float | None) -> float:
    """A loss to compare (NaN, None: worse than any)."""
    return math.inf if loss is None or not math.isfinite(loss) else float(loss)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@ALGORITHMS.register("swad")
class SWAD(WeightAveraging):
    """Ends training on the dense average of the weights in the dev-loss valley (BatchNorm refitted)."""

    Config = SWADConfig

    def __init__(self, cfg: SWADConfig, model: nn.Module, params: Mapping[str, nn.Parameter], loss_fn: LossFn,
                 *, seed: int = 0) -> None:
        super().__init__(cfg, model, params, loss_fn, seed=seed)
        self.current = Segment()  # steps since the last evaluation
        self.queue: list[Segment] = []  # the last n_converge segments, until the window starts
        self.window: Segment | None = None  # the accepted average, once started
        self.pending = Segment()  # segments above the threshold since the last accepted one
        self.minimum: float | None = None  # the dev loss at the window start
        self.closed = False
        self.bn_inputs: list[Batch] = []  # kept only when the model has BatchNorm layers
        self.has_bn = bool(batchnorms(model))

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        if self.has_bn:  # detached on the CPU: only the last few, for recompute_batchnorm
            pooled = Batch.cat(list(batches.values())).to("cpu")
            pooled = Batch(pooled.inputs.detach(), pooled.labels, pooled.lengths)
            self.bn_inputs = [*self.bn_inputs, pooled][-self.cfg.bn_batches:]
        return super().update(batches)

    def after_step(self, step: int) -> None:
        """Add this step's weights to the open segment (nothing once the window has closed)."""
        super().after_step(step)
        if not self.closed:
            self.current.add(self.params, step)

    def after_eval(self, step: int, dev: Mapping[str, float]) -> None:
        """Close the segment with the dev loss and apply the start/end rules."""
        super().after_eval(step, dev)
        if self.closed or self.current.count == 0:  # no step since the previous evaluation: nothing new
            return
        seg, self.current = self.current, Segment()
        seg.loss = finite_or_inf(float(dev["loss"]))
        if self.window is not None:
            self._extend(seg)
            return
        self.queue = [*self.queue, seg][-self.cfg.n_converge:]
        losses = [s.loss for s in self.queue]
        if len(self.queue) == self.cfg.n_converge and math.isfinite(losses[0]) and losses[0] <= min(losses):
            self.window, self.minimum, rest, self.queue = self.queue[0], losses[0], self.queue[1:], []
            for s in rest:
                self._extend(s)

    @property
    def started(self) -> bool:
        return self.window is not None

    @property
    def threshold(self) -> float | None:
        """Dev loss above which an evaluation counts against the window."""
        return None if self.minimum is None else (1.0 + self.cfg.tolerance_ratio) * self.minimum

    def _extend(self, seg: Segment) -> None:
        if self.closed:
            return
        if seg.loss <= self.threshold:  # back in the valley: the run above the threshold belongs to it
            self.window.merge(self.pending)
            self.window.merge(seg)
            self.pending = Segment()
            return
        self.pending.merge(seg)
        if self.pending.evals >= self.cfg.n_tolerance:
            self.closed, self.pending, self.current = True, Segment(), Segment()

    def averaged(self) -> Segment | None:
        """The segment whose mean is the final model (see the module docstring); None before any step."""
        if self.window is not None:
            return self.window
        pool = Segment()
        for s in self.queue or [self.current]:
            pool.merge(s)
        return pool if pool.count else None

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """Mean weights of the window, with the model's BatchNorm statistics recomputed at them."""
        seg = self.averaged()
        if seg is None:
            return None
        weights = {n: s / seg.count for n, s in seg.sum.items()}
        self.recompute_batchnorm(weights)
        return weights

    def recompute_batchnorm(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Running mean/var of every BatchNorm layer as the plain average over the kept training draws."""
        layers = batchnorms(self.model)
        if not layers or not self.bn_inputs:
            return
        modes = [(m, m.training) for m in self.model.modules()]
        momenta = [m.momentum for m in layers]
        at = {n: w.to(self.params[n].dtype) for n, w in weights.items()}
        device = next(iter(self.params.values())).device
        try:
            for m in layers:
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the forward passes
            self.model.train()
            # Train mode draws dropout masks: keep the global RNG where it was.
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for batch in self.bn_inputs:
                    self.forward(batch.to(device), at)
        finally:
            for m, training in modes:
                m.training = training
            for m, momentum in zip(layers, momenta):
                m.momentum = momentum

    def averaging_state(self) -> dict[str, Any]:
        return {
            "current": self.current.state(), "queue": [s.state() for s in self.queue],
            "window": None if self.window is None else self.window.state(), "pending": self.pending.state(),
            "minimum": self.minimum, "closed": self.closed,
            "bn_inputs": [{"inputs": b.inputs, "labels": b.labels, "lengths": b.lengths} for b in self.bn_inputs],
        }

    def load_averaging_state(self, state: Mapping[str, Any]) -> None:
        self.current = Segment.restore(state["current"], self.params)
        self.queue = [Segment.restore(s, self.params) for s in state["queue"]]
        self.window = None if state["window"] is None else Segment.restore(state["window"], self.params)
        self.pending = Segment.restore(state["pending"], self.params)
        self.minimum, self.closed = state["minimum"], bool(state["closed"])
        self.bn_inputs = [Batch(b["inputs"], b["labels"], b["lengths"]) for b in state["bn_inputs"]]

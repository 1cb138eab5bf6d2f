"""EMA: an exponential moving average of the trainable weights, validated and kept instead of the live ones.

Also home of `WeightAveraging`, the small base of algorithms that form gradients like a *base*
algorithm (`base: {name: erm}` by default) and only average the weights it visits (EMA, SWAD).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from metadg.algorithms.base import LossFn, Wrapper
from metadg.config import ConfigError, StrictModel, validate_plugin
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


def base_spec(value: Any) -> dict[str, Any]:
    """The validated `{name: ..., **fields}` of a wrapped algorithm; errors read `algorithm.base.<key>`."""
    # ConfigError is a ValueError: pydantic wraps it and the formatter prefixes `algorithm.`.
    plugin = validate_plugin(ALGORITHMS, value, "base")
    if issubclass(plugin.cls, WeightAveraging):
        raise ConfigError(f"base.name: {plugin.name} averages weights itself and cannot be wrapped; "
                          "name an algorithm that forms gradients (e.g. erm, mldg)")
    if plugin.cls.owns_step:
        raise ConfigError(f"base.name: {plugin.name} takes its own optimisation steps; weight averaging "
                          "wraps an algorithm that only forms gradients (e.g. erm, mldg)")
    return plugin.as_dict()


class WrapperConfig(StrictModel):
    """The algorithm whose gradients are used."""

    base: dict[str, Any] = Field(
        default_factory=lambda: {"name": "erm"}, validate_default=True,
        description="algorithm that forms the gradients, {name: ..., **its fields} (not one that owns its step)",
    )

    @field_validator("base", mode="before")
    @classmethod
    def _check_base(cls, value: Any) -> dict[str, Any]:
        return base_spec(value)


def snapshot(params: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """float32 copies of the trainable weights, on their device."""
    return {n: p.detach().to(torch.float32, copy=True) for n, p in params.items()}


def to_device(tensors: Mapping[str, torch.Tensor] | None,
              params: Mapping[str, nn.Parameter]) -> dict[str, torch.Tensor] | None:
    """Restored float32 tensors moved to their parameters' device (checkpoints load on the CPU)."""
    if tensors is None:
        return None
    return {n: t.to(params[n].device, torch.float32).clone() for n, t in tensors.items()}


class WeightAveraging(Wrapper):
    """Forms gradients by delegating to `cfg.base`; subclasses add weight averaging in the hooks.

    Averages cover the trainable parameters only (`self.params`), as float32 tensors on their
    device: the model is never copied.
    """

    Config = WrapperConfig

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """The base algorithm's gradients and metrics."""
        self.sync_base()
        return self.base.update(batches)

    def state_dict(self) -> dict[str, Any]:
        """The base's state and ours beside the averaging state of `averaging_state`."""
        return {**super().state_dict(), **self.averaging_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.load_averaging_state(state)

    def averaging_state(self) -> dict[str, Any]:
        """Tensors and plain values a resumed run needs to continue the average exactly."""
        return {}

    def load_averaging_state(self, state: Mapping[str, Any]) -> None:
        """Restore what `averaging_state` returned."""


class EMAConfig(WrapperConfig):
    """w̄ ← decay·w̄ + (1 − decay)·w after every applied step."""

    decay: float = Field(0.999, ge=0, lt=1, description="EMA decay per optimisation step")
    start_step: int = Field(0, ge=0, description="until this step the average just follows the live weights")


@ALGORITHMS.register("ema")
class EMA(WeightAveraging):
    """Validates, checkpoints and finally evaluates the EMA weights; the optimizer keeps the live ones."""

    Config = EMAConfig

    def __init__(self, cfg: EMAConfig, model: nn.Module, params: Mapping[str, nn.Parameter], loss_fn: LossFn,
                 *, seed: int = 0) -> None:
        super().__init__(cfg, model, params, loss_fn, seed=seed)
        self.avg: dict[str, torch.Tensor] | None = None  # None until the first applied step
        self.updates = 0

    def after_step(self, step: int) -> None:
        """Fold the weights of this step into the average (or take them as it, at first and until start_step)."""
        super().after_step(step)
        if self.avg is None or step <= self.cfg.start_step:
            self.avg = snapshot(self.params)
        else:
            decay, avg = self.cfg.decay, list(self.avg.values())
            with torch.no_grad():  # fused over all tensors: LoRA has hundreds of small ones
                torch._foreach_mul_(avg, decay)
                torch._foreach_add_(avg, [self.params[n].detach().float() for n in self.avg], alpha=1.0 - decay)
        self.updates += 1

    def eval_weights(self) -> dict[str, torch.Tensor] | None:
        """w̄ (None before any step: the live weights)."""
        return self.avg

    def averaging_state(self) -> dict[str, Any]:
        return {"avg": self.avg, "updates": self.updates}

    def load_averaging_state(self, state: Mapping[str, Any]) -> None:
        self.avg, self.updates = to_device(state["avg"], self.params), int(state["updates"])

"""Algorithm contract: turn per-domain batches into gradients on the trainable parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch
from pydantic import BaseModel
from torch import nn
from torch.func import functional_call

from metadg.config import StrictModel
from metadg.engine.batch import Batch

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Grads = Sequence[torch.Tensor | None]


def no_reduce(grads: Grads) -> Grads:
    """The single-process reduction: gradients stay as they are."""
    return grads


class Algorithm(ABC):
    """Computes `.grad` of the trainable parameters from one step's domain batches.

    The Trainer owns optimizer, scheduler, clipping and AMP; an algorithm only
    forms gradients, so it stays small and testable against hand computations.
    """

    Config: type[BaseModel] = StrictModel

    def __init__(
        self,
        cfg: BaseModel,
        model: nn.Module,
        params: Mapping[str, nn.Parameter],
        loss_fn: LossFn,
        *,
        seed: int = 0,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.params = dict(params)
        self.loss_fn = loss_fn
        self.generator = torch.Generator().manual_seed(seed)
        # Applied to gradients an algorithm uses inside its update (MLDG's inner
        # step); data-parallel training sets it to the mean over ranks, so every
        # rank takes the virtual step of the global batch. `.grad` is averaged by the Trainer.
        self.reduce: Callable[[Grads], Grads] = no_reduce

    def loss(self, batch: Batch, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Loss of `batch`, at the module's own parameters or at `params` (a virtual point)."""
        args = (batch.inputs, batch.lengths)
        logits = self.model(*args) if params is None else functional_call(self.model, dict(params), args)
        return self.loss_fn(logits, batch.labels)

    @abstractmethod
    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Accumulate gradients for one step into `.grad`; return scalar metrics."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """RNG state, so a resumed run draws the same domain splits."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned."""
        self.generator.set_state(state["generator"])


def accumulate_grad(params: Mapping[str, nn.Parameter], grads: Mapping[str, torch.Tensor | None]) -> None:
    """Add `grads` into `.grad` (None entries are parameters the loss did not touch)."""
    for name, g in grads.items():
        if g is None:
            continue
        p = params[name]
        p.grad = g.detach().clone() if p.grad is None else p.grad.add_(g)

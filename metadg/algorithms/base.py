"""Algorithm contract: turn per-domain batches into gradients on the trainable parameters."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
    Just enough is open beyond that:

    * `forward(batch, embedding=True)` gives the utterance embeddings beside the
      logits (CORAL, MMD, DANN, mixup), in the same forward pass;
    * `owns_step = True`: `update` changes the trainable weights itself (Fish,
      Reptile); the Trainer then skips clipping and its optimizer step but still
      steps the schedule (`self.lr` holds the scheduled learning rate), counts,
      checkpoints and resumes. Such an update must leave the weights untouched when
      its step is not finite;
    * `after_step(step)` runs after every applied step, `after_eval(step, dev)` after
      every validation (SWAD, EMA);
    * `eval_weights()` names the weights that are validated and checkpointed instead
      of the live ones (EMA); `final_weights()` replaces the selected checkpoint at
      the end of training (SWAD's average);
    * `self.reduce(tensors)` is the mean over data-parallel ranks (identity in one
      process): for MLDG's inner gradient, and for per-domain scalars that must
      agree on every rank (GroupDRO's weights, VREx's variance).

    Whatever the state of an algorithm holds goes into `state_dict` (tensors and
    plain values), which every resumable checkpoint carries. `state_dict` may return
    live tensors (the Trainer writes them out at once); a caller that keeps a
    snapshot while training goes on copies it (`copy.deepcopy`).
    """

    Config: type[BaseModel] = StrictModel
    #: True: update() takes the optimisation step itself (the Trainer's optimizer does not step)
    owns_step: bool = False

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
        #: the scheduled learning rate of this step (set by the Trainer before update)
        self.lr: float = 0.0

    def forward(self, batch: Batch, params: Mapping[str, torch.Tensor] | None = None,
                embedding: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of `batch` (and its utterance embeddings when asked), at the module's parameters or at `params`."""
        args = (batch.inputs, batch.lengths)
        kwargs = {"with_embedding": True} if embedding else {}
        if params is None:
            return self.model(*args, **kwargs)
        return functional_call(self.model, dict(params), args, kwargs)

    def loss(self, batch: Batch, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Loss of `batch`, at the module's own parameters or at `params` (a virtual point)."""
        return self.loss_fn(self.forward(batch, params), batch.labels)

    def after_step(self, step: int) -> None:
        """Called after every applied optimisation step (not after a skipped NaN/Inf step)."""

    def after_eval(self, step: int, dev: Mapping[str, float]) -> None:
        """Called after every validation with the dev metrics (they include `loss`, the dev cross-entropy)."""

    def eval_weights(self) -> dict[str, torch.Tensor] | None:
        """Trainable weights to validate and checkpoint instead of the live ones; None = the live ones."""
        return None

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """Trainable weights that replace the selected checkpoint when training ends; None = keep it."""
        return None

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



class Wrapper(Algorithm):
    """An algorithm around a base algorithm (`cfg.base`, a validated `{name: ...}`): the base forms the gradients.

    The Trainer sets `lr` and `reduce` on the wrapper; `sync_base` hands them on. Hooks and
    state pass through to the base unless a wrapper overrides them (SAM, EMA, SWAD).
    """

    def __init__(self, cfg: BaseModel, model: nn.Module, params: Mapping[str, nn.Parameter], loss_fn: LossFn,
                 *, seed: int = 0) -> None:
        super().__init__(cfg, model, params, loss_fn, seed=seed)
        from metadg.config import validate_plugin
        from metadg.registry import ALGORITHMS

        self.base: Algorithm = validate_plugin(ALGORITHMS, cfg.base, "algorithm.base").build(
            model, params, loss_fn, seed=seed)

    def sync_base(self) -> None:
        """Give the base this step's learning rate and the rank reduction."""
        self.base.lr, self.base.reduce = self.lr, self.reduce

    def after_step(self, step: int) -> None:
        self.base.after_step(step)

    def after_eval(self, step: int, dev: Mapping[str, float]) -> None:
        self.base.after_eval(step, dev)

    def eval_weights(self) -> dict[str, torch.Tensor] | None:
        return self.base.eval_weights()

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        return self.base.final_weights()

    def state_dict(self) -> dict[str, Any]:
        """Our generator and the base's whole state."""
        return {**super().state_dict(), "base": self.base.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned, the base's included."""
        super().load_state_dict(state)
        self.base.load_state_dict(state["base"])


# Helpers several algorithms share: per-domain losses from one pooled forward pass, rank means.


def domain_logits(algo: Algorithm, batches: Mapping[str, Batch], domains: list[str]) -> list[torch.Tensor]:
    """Each domain's logits, in the order of `domains`, from one forward pass over the pooled batch."""
    # One forward pass over every domain (cost ≈ ERM), then each domain's loss on its own slice.
    logits = algo.forward(Batch.cat([batches[d] for d in domains]))
    return list(logits.split([len(batches[d]) for d in domains]))


def domain_losses(algo: Algorithm, batches: Mapping[str, Batch], domains: list[str]) -> torch.Tensor:
    """Per-domain losses (D,) in the order of `domains`."""
    parts = domain_logits(algo, batches, domains)
    return torch.stack([algo.loss_fn(z, batches[d].labels) for z, d in zip(parts, domains)])


def ranks_mean(algo: Algorithm, local: torch.Tensor) -> torch.Tensor:
    """The mean of `local` over data-parallel ranks as value, with the gradient flowing into this rank's `local`."""
    glob = algo.reduce([local.detach().clone()])[0]
    # Exactly `glob` in the forward pass (local − local.detach() is 0), the identity in the backward pass.
    return glob + (local - local.detach())

"""Fish (Shi et al. 2021, "Gradient Matching for Domain Generalization"): sequential inner SGD over domains, then interpolate."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm
from metadg.algorithms.inner_loop import inner_sgd, outer_step, skipped
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class FishConfig(StrictModel):
    """Fish's outer (meta) step size and its inner SGD step size."""

    meta_lr: float = Field(0.5, gt=0, le=1, description="ε of θ ← θ + ε(θ̃ − θ) (Shi et al. 2021; DomainBed default 0.5)")
    inner_lr: float | None = Field(
        None,
        gt=0,
        description="step size of the inner SGD over domains; default: the Trainer's scheduled lr. Shi et al. 2021 "
        "(and DomainBed) use an inner Adam; plain SGD keeps no inner state and needs an SGD-scale train.lr",
    )


@ALGORITHMS.register("fish")
class Fish(Algorithm):
    """One SGD step per domain in a random order on a copy θ̃, then move θ a fraction ε towards θ̃."""

    Config = FishConfig
    owns_step = True

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """θ̃ ← SGD over the domains in random order from θ; θ ← θ + ε(θ̃ − θ); no `.grad` is left."""
        domains = sorted(batches)
        # The paper draws a fresh domain order every step: the inner trajectory's gradient-inner-product
        # term (what Fish maximises) is then symmetric over domain pairs on average.
        self.last_order = [domains[i] for i in torch.randperm(len(domains), generator=self.generator).tolist()]
        lr = self.cfg.inner_lr if self.cfg.inner_lr is not None else self.lr
        result = inner_sgd(self, [batches[d] for d in self.last_order], lr)
        if result is None:  # the live weights were never written: the Trainer counts a skipped step
            return skipped()
        theta_tilde, losses = result
        outer_step(self.params, theta_tilde, self.cfg.meta_lr)
        return {"loss": sum(losses) / len(losses)}  # mean inner loss; the first is the loss at θ

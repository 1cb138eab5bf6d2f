"""Reptile (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms") with source domains as tasks."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm
from metadg.algorithms.inner_loop import inner_sgd, mean_weights, outer_step, skipped
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class ReptileConfig(StrictModel):
    """Reptile's task sampling, inner SGD and outer step size."""

    meta_lr: float = Field(
        1.0, gt=0, le=1,
        description="outer step ε of θ ← θ + ε(θ̃ − θ) (Nichol et al. 2018); 1 with inner_steps 1 is plain SGD on one domain",
    )
    inner_steps: int = Field(
        1, ge=1, description="inner SGD steps k per task (Nichol et al. 2018), each on the step's whole batch of the domain"
    )
    inner_lr: float | None = Field(None, gt=0, description="inner SGD step size; default: the Trainer's scheduled lr")
    domains_per_step: int = Field(
        1, ge=1, description="tasks (domains) per outer step; their end points are averaged (batched Reptile, Nichol et al. 2018)"
    )


@ALGORITHMS.register("reptile")
class Reptile(Algorithm):
    """k SGD steps on a random domain from θ on a copy θ̃, then move θ a fraction ε towards θ̃."""

    Config = ReptileConfig
    owns_step = True

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """θ̃_d ← k SGD steps on domain d from θ for each drawn d; θ ← θ + ε(mean_d θ̃_d − θ); no `.grad` is left."""
        cfg, domains = self.cfg, sorted(batches)
        if cfg.domains_per_step > len(domains):
            raise ValueError(f"algorithm.domains_per_step={cfg.domains_per_step} needs at least as many source "
                             f"domains, got {len(domains)}")
        self.last_domains = [domains[i] for i in torch.randperm(len(domains), generator=self.generator)[:cfg.domains_per_step].tolist()]
        lr = cfg.inner_lr if cfg.inner_lr is not None else self.lr
        ends, losses = [], []
        for d in self.last_domains:
            # The k inner steps reuse the step's batch of the domain rather than splitting it in k:
            # each step keeps the sampling policy's full, class-balanced batch.
            result = inner_sgd(self, [batches[d]] * cfg.inner_steps, lr)
            if result is None:  # nothing written yet: the Trainer counts a skipped step
                return skipped()
            ends.append(result[0])
            losses.append(result[1][0])  # the loss at θ, comparable with other algorithms' training loss
        outer_step(self.params, mean_weights(ends), cfg.meta_lr)
        return {"loss": sum(losses) / len(losses)}

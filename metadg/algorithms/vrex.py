"""V-REx (Krueger et al. 2021): mean domain loss plus λ times the variance of the domain losses."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm, domain_losses, ranks_mean
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class VRExConfig(StrictModel):
    """Variance penalty over the source domains' losses, switched on after a warm-up."""

    penalty_weight: float = Field(
        10.0, ge=0,
        description="λ, weight of the variance of the per-domain losses after anneal_steps "
        "(Krueger et al. 2021, V-REx eq. 8; DomainBed vrex_lambda 10)",
    )
    anneal_steps: int = Field(
        500, ge=0,
        description="optimisation steps during which the penalty weight is 1.0 before λ applies "
        "(DomainBed vrex_penalty_anneal_iters 500)",
    )


class AnnealedPenalty(Algorithm):
    """Penalty weight 1.0 for the first `anneal_steps` applied steps, then `penalty_weight` (DomainBed's schedule).

    DomainBed also resets Adam when the weight jumps; metadg's Trainer owns the
    optimizer and its state must resume exactly, so it is NOT reset here: Adam's moments
    simply meet the jump in gradient scale.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: applied optimisation steps so far: grad_accum draws of one step share a weight; a skipped step does not count
        self.steps = 0

    def penalty_weight(self) -> float:
        """The weight of the penalty at this step."""
        return self.cfg.penalty_weight if self.steps >= self.cfg.anneal_steps else 1.0

    def after_step(self, step: int) -> None:
        """Count the applied step."""
        self.steps += 1

    def state_dict(self) -> dict:
        """The generator and the step counter (where the schedule stands)."""
        return {**super().state_dict(), "steps": self.steps}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.steps = int(state["steps"])


@ALGORITHMS.register("vrex")
class VREx(AnnealedPenalty):
    """Minimise mean_d ℓ_d + λ·Var_d(ℓ_d) (population variance, as DomainBed).

    The variance is that of the global batch's per-domain losses, also under data
    parallelism: each ℓ_d takes the value of its mean over ranks (`self.reduce`)
    while its gradient flows into this rank's loss, so rank r leaves
    ∂J/∂ℓ_d·∇ℓ_d^r and the Trainer's mean over ranks is exactly ∇J (given the same
    per-domain sample counts on every rank, as the batcher draws them).
    """

    Config = VRExConfig

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Backpropagate mean + λ·variance of the per-domain losses."""
        losses = ranks_mean(self, domain_losses(self, batches, sorted(batches)))
        mean = losses.mean()
        penalty = ((losses - mean) ** 2).mean()
        weight = self.penalty_weight()
        loss = mean + weight * penalty
        loss.backward()
        return {"loss": float(loss.detach()), "loss_erm": float(mean.detach()), "penalty": float(penalty.detach()),
                "penalty_weight": float(weight)}

"""IRM (Arjovsky et al. 2019), IRMv1: mean domain loss plus λ times the dummy-classifier gradient penalty."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from metadg.algorithms.base import domain_logits, ranks_mean
from metadg.algorithms.vrex import AnnealedPenalty
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class IRMConfig(StrictModel):
    """IRMv1 penalty over the source domains, switched on after a warm-up."""

    penalty_weight: float = Field(
        100.0, ge=0,
        description="λ, weight of the IRMv1 penalty after anneal_steps (Arjovsky et al. 2019, eq. IRMv1; "
        "DomainBed irm_lambda 100)",
    )
    anneal_steps: int = Field(
        500, ge=0,
        description="optimisation steps during which the penalty weight is 1.0 before λ applies "
        "(DomainBed irm_penalty_anneal_iters 500)",
    )


@ALGORITHMS.register("irm")
class IRM(AnnealedPenalty):
    """Minimise mean_d ℓ_d + λ·mean_d ‖∇_s ℓ_d(s·logits)|_{s=1}‖², the squared norm as DomainBed estimates it.

    The squared gradient is estimated without bias as the product of the gradients
    on the two halves of each domain's batch (even and odd samples). Under data
    parallelism each half-gradient takes its mean over ranks as value (its
    gradient flows into this rank's), so the penalty is that of the global batch
    and the Trainer's mean of the ranks' gradients is exactly its gradient. ℓ_d is
    linear in the samples and needs no such care.
    """

    Config = IRMConfig

    def scale_grads(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(2,) d loss/d s at s = 1.0 on the even and the odd samples, differentiable w.r.t. the logits."""
        if len(labels) < 2:
            raise ValueError(f"irm: the penalty needs at least 2 samples per domain batch, got {len(labels)}")
        # At least float32: the dummy scale's gradient is a small difference of terms, too coarse in bfloat16.
        scale = torch.ones((), dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device,
                           requires_grad=True)
        grads = []
        for half in (slice(0, None, 2), slice(1, None, 2)):
            # The task's own loss (class weights included), so the penalty asks the optimum of the objective trained.
            loss = self.loss_fn(logits[half].to(scale.dtype) * scale, labels[half])
            grads.append(torch.autograd.grad(loss, [scale], create_graph=True)[0])
        return torch.stack(grads)

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Backpropagate mean_d ℓ_d + w·mean_d penalty_d (w = 1.0 during the warm-up, λ after)."""
        domains = sorted(batches)
        logits = domain_logits(self, batches, domains)
        nll = torch.stack([self.loss_fn(z, batches[d].labels) for z, d in zip(logits, domains)]).mean()
        # One collective for every domain's two half-gradients.
        grads = ranks_mean(self, torch.stack([self.scale_grads(z, batches[d].labels) for z, d in zip(logits, domains)]))
        penalty = (grads[:, 0] * grads[:, 1]).mean()
        weight = self.penalty_weight()
        loss = nll + weight * penalty
        loss.backward()
        return {"loss": float(loss.detach()), "loss_erm": float(nll.detach()), "penalty": float(penalty.detach()),
                "penalty_weight": float(weight)}

"""Deep CORAL (Sun & Saenko 2016): align the embeddings' means and covariances across source domains."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping
from itertools import combinations

import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class FeaturePenaltyConfig(StrictModel):
    """Task loss plus γ times a distance between every pair of domains' embedding distributions."""

    gamma: float = Field(1.0, ge=0, description="γ: weight of the mean pairwise feature-distribution penalty "
                         "(DomainBed's mmd_gamma, default 1)")


class FeaturePenalty(Algorithm):
    """mean_d ℓ_d + γ · mean over domain pairs of penalty(z_i, z_j), the shared part of CORAL and MMD.

    One forward over the pooled batch gives logits and embeddings; both are split
    back per domain, so the cost is ERM's plus the penalty on (B, D) embeddings.
    Under data parallelism each rank's penalty sees only its own slice of every
    domain batch; the Trainer averages the resulting gradients (as DomainBed's
    per-GPU minibatches would).
    """

    Config = FeaturePenaltyConfig

    @abstractmethod
    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distance between two domains' (n, D) embedding samples (a scalar)."""

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Backward of the task loss plus γ times the mean pairwise penalty; returns loss, loss_task, penalty."""
        domains = sorted(batches)
        sizes = [len(batches[d]) for d in domains]
        logits, z = self.forward(Batch.cat([batches[d] for d in domains]), embedding=True)
        task = torch.stack([self.loss_fn(lg, batches[d].labels)
                            for d, lg in zip(domains, logits.split(sizes))]).mean()
        # Covariances and squared distances lose too much in bfloat16: compute the
        # penalty in float32 (at least) even when the Trainer runs the step under autocast.
        with torch.autocast(z.device.type, enabled=False):
            parts = z.to(torch.promote_types(z.dtype, torch.float32)).split(sizes)
            pairs = list(combinations(range(len(parts)), 2))
            pen = (torch.stack([self.penalty(parts[i], parts[j]) for i, j in pairs]).mean()
                   if pairs else parts[0].new_zeros(()))
        loss = task + self.cfg.gamma * pen
        loss.backward()
        return {"loss": float(loss.detach()), "loss_task": float(task.detach()), "penalty": float(pen.detach())}


@ALGORITHMS.register("coral")
class CORAL(FeaturePenalty):
    """Penalise differences of the embeddings' first and second moments between domains."""

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """mean((μ_x − μ_y)²) + mean((C_x − C_y)²), covariances with the unbiased (n − 1) denominator."""
        if len(x) < 2 or len(y) < 2:
            raise ValueError("coral needs at least 2 samples per domain batch to estimate a covariance "
                             f"(got {len(x)} and {len(y)}); raise train.batch_per_domain")
        mean_x, mean_y = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
        cent_x, cent_y = x - mean_x, y - mean_y
        cova_x = cent_x.T @ cent_x / (len(x) - 1)
        cova_y = cent_y.T @ cent_y / (len(y) - 1)
        return (mean_x - mean_y).pow(2).mean() + (cova_x - cova_y).pow(2).mean()

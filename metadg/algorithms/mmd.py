"""MMD-AAE's feature alignment (Li et al. 2018): Gaussian-kernel MMD between every pair of source domains."""

from __future__ import annotations

import torch
from pydantic import Field

from metadg.algorithms.coral import FeaturePenalty, FeaturePenaltyConfig
from metadg.registry import ALGORITHMS

#: DomainBed's kernel scales: exp(−s·‖x − y‖²) summed over these s (a mixture covers any embedding scale)
SCALES = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


class MMDConfig(FeaturePenaltyConfig):
    """γ and the Gaussian kernels of the MMD penalty."""

    bandwidths: list[float] = Field(
        default_factory=lambda: list(SCALES), min_length=1,
        description="Gaussian kernel scales s of k(x, y) = Σ_s exp(−s·‖x − y‖²) (DomainBed's gamma list; "
        "Li et al. 2018 use a mixture of RBF kernels)",
    )


def sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances, clamped above 0 so round-off never gives a negative one."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)
    return d.clamp_min(1e-30)


@ALGORITHMS.register("mmd")
class MMD(FeaturePenalty):
    """Penalise the biased MMD² estimate between domains' embeddings under a mixture of Gaussian kernels."""

    Config = MMDConfig

    def kernel(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, m) kernel matrix Σ_s exp(−s·‖x_i − y_j‖²)."""
        d = sq_dists(x, y)
        return sum(torch.exp(-s * d) for s in self.cfg.bandwidths)

    def penalty(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """mean k(x, x') + mean k(y, y') − 2 mean k(x, y)."""
        return self.kernel(x, x).mean() + self.kernel(y, y).mean() - 2 * self.kernel(x, y).mean()

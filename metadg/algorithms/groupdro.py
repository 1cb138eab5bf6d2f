"""GroupDRO (Sagawa et al. 2020): minimise the q-weighted domain losses, q following the worst domains."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from metadg.algorithms.base import Algorithm, domain_losses
from metadg.config import StrictModel
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class GroupDROConfig(StrictModel):
    """Exponentiated-gradient weights over the source domains."""

    eta: float = Field(
        1e-2, gt=0,
        description="step size of the domain weights, q_d ← q_d·exp(η·ℓ_d) then normalised "
        "(Sagawa et al. 2020, Alg. 1; DomainBed groupdro_eta 1e-2)",
    )


@ALGORITHMS.register("groupdro")
class GroupDRO(Algorithm):
    """Weight each domain's loss by q, raised multiplicatively for domains that do badly."""

    Config = GroupDROConfig

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        #: the sorted domains of the first step; q[i] belongs to domains[i]
        self.domains: list[str] | None = None
        # float64 so that a long run's repeated renormalisation does not drift; kept on CPU in the state.
        self.q: torch.Tensor | None = None

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Update q with this step's losses (mean over ranks), then backpropagate Σ_d q_d·ℓ_d."""
        domains = sorted(batches)
        if self.domains is None:
            self.domains = domains
            self.q = torch.full((len(domains),), 1.0 / len(domains), dtype=torch.float64)
        elif domains != self.domains:
            raise ValueError(f"groupdro: this step's domains {domains} differ from the first step's {self.domains}; "
                             "the domain weights q are defined over a fixed set of domains")
        losses = domain_losses(self, batches, domains)
        # Every rank must keep the same q: update it from the global batch's per-domain losses.
        (global_losses,) = self.reduce([losses.detach().to(torch.float64).clone()])
        q = self.q.to(global_losses.device)
        if bool(torch.isfinite(global_losses).all()):  # a NaN step (skipped by the Trainer) must not poison q for good
            q = q * torch.exp(self.cfg.eta * global_losses)
            q = q / q.sum()
        self.q = q.cpu()
        # q is a constant of this step: the local Σ q_d·ℓ_d, averaged over ranks by the Trainer, is the global one's gradient.
        loss = (q.to(losses) * losses).sum()
        loss.backward()
        metrics = {"loss": float((q * global_losses).sum()), "loss_erm": float(global_losses.mean())}
        metrics.update({f"q/{d}": float(v) for d, v in zip(domains, self.q)})
        return metrics

    def state_dict(self) -> dict:
        """The generator, the domain order and q, so a resumed run continues with the same weights."""
        return {**super().state_dict(), "domains": self.domains, "q": self.q}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        self.domains = None if state["domains"] is None else list(state["domains"])
        self.q = None if state["q"] is None else state["q"].to(torch.float64).cpu().clone()

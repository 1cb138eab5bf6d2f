"""SAM (Foret et al. 2021, "Sharpness-Aware Minimization"): any base algorithm's gradient, taken at θ + ρ·g/‖g‖."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field, field_validator

from metadg.algorithms.base import Wrapper
from metadg.config import ConfigError, StrictModel, validate_plugin
from metadg.engine.batch import Batch
from metadg.registry import ALGORITHMS


class SAMConfig(StrictModel):
    """Radius of the adversarial weight perturbation and the algorithm whose gradient is made sharpness-aware."""

    rho: float = Field(0.05, gt=0, description="radius ρ of the perturbation ε = ρ·g/‖g‖ (Foret et al. 2021; DomainBed default 0.05)")
    base: dict[str, Any] = Field(
        default_factory=lambda: {"name": "erm"},
        validate_default=True,
        description="the algorithm {name: ..., **fields} whose gradient SAM (Foret et al. 2021) takes at θ + ε; "
        "one that forms .grad (not Fish/Reptile, not sam itself)",
    )

    @field_validator("base", mode="before")
    @classmethod
    def _check_base(cls, value: Any) -> dict[str, Any]:
        # ConfigError is a ValueError: pydantic wraps it and the formatter prefixes our
        # relative path, so a typo reads `algorithm.base.betta: unknown key`.
        plugin = validate_plugin(ALGORITHMS, value, "base")
        if issubclass(plugin.cls, SAM):
            raise ConfigError("base.name: sam cannot wrap itself")
        if plugin.cls.owns_step:
            raise ConfigError(f"base.name: {plugin.name} takes its own optimisation step, so it leaves no gradient "
                              "for SAM to perturb along")
        return plugin.as_dict()


@ALGORITHMS.register("sam")
class SAM(Wrapper):
    """Run the base twice: at θ for the ascent direction, at θ + ε for the gradient that is applied."""

    Config = SAMConfig

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Leave the base's gradient at θ + ρ·g/‖g‖ in `.grad`; the weights come back bit-identical."""
        self.sync_base()
        base, params = self.base, self.params
        # Under grad_accum, .grad already holds earlier draws: set it aside so g is this draw's alone.
        earlier = {n: p.grad for n, p in params.items()}
        for p in params.values():
            p.grad = None
        # Both passes must judge the same objective: the base's random choices (MLDG's meta-test
        # split) are replayed from this state, so the second pass advances it as one plain step would.
        state = copy.deepcopy(base.state_dict())
        metrics = base.update(batches)
        names = [n for n, p in params.items() if p.grad is not None]
        # The rank-mean keeps ε, and so the weights, identical on every data-parallel rank.
        grads = self.reduce([params[n].grad.detach() for n in names])
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else None
        theta = {n: params[n].detach().clone() for n in names}
        with torch.no_grad():
            for n, g in zip(names, grads):
                params[n].add_(g * (self.cfg.rho / (norm + 1e-12)))
        for p in params.values():
            p.grad = None
        base.load_state_dict(state)
        try:
            base.update(batches)
        finally:
            # Copy θ back rather than subtracting ε: θ + ε − ε is not θ in floating point.
            with torch.no_grad():
                for n, t in theta.items():
                    params[n].copy_(t)
        for n, p in params.items():
            if earlier[n] is not None:
                p.grad = earlier[n] if p.grad is None else p.grad.add_(earlier[n])
        return {**metrics, "sam_grad_norm": float(norm) if norm is not None else 0.0}

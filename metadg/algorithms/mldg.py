"""MLDG (Li et al. 2018): meta-learning for domain generalization, F(θ) + β·G(θ − α∇F(θ))."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import AliasChoices, Field

from metadg.algorithms.base import Algorithm, accumulate_grad
from metadg.config import StrictModel
from metadg.registry import ALGORITHMS
from metadg.engine.batch import Batch


class MLDGConfig(StrictModel):
    """Meta-train/meta-test split of the source domains at every step."""

    alpha: float = Field(1e-3, gt=0, description="inner (virtual) SGD step size on the meta-train loss")
    beta: float = Field(1.0, ge=0, description="weight of the meta-test loss G")
    n_meta_test: int = Field(1, ge=1, description="source domains held out as meta-test each step")
    first_order: bool = Field(True, description="drop the Hessian term (∇F treated as constant)")
    meta_test_shared: bool = Field(
        True,
        # The old name keeps working in configs; it is written out under the new one.
        validation_alias=AliasChoices("meta_test_shared", "meta_test_bonafide"),
        description="meta-test batches keep the samples the task's sampling policy shares across domains; false = "
        "judge the virtual step on the held-out domains' own samples only (what every domain shares is not what "
        "shifts). Formerly meta_test_bonafide",
    )


@ALGORITHMS.register("mldg")
class MLDG(Algorithm):
    """Simulate a domain shift each step: adapt on meta-train domains, be judged on meta-test ones."""

    Config = MLDGConfig

    def split(self, domains: list[str]) -> tuple[list[str], list[str]]:
        """A random (meta-train, meta-test) split of `domains` from the algorithm's own generator."""
        k = self.cfg.n_meta_test
        if len(domains) <= k:
            raise ValueError(f"algorithm.n_meta_test={k} needs more than {k} source domains, got {len(domains)}")
        order = torch.randperm(len(domains), generator=self.generator).tolist()
        test = sorted(domains[i] for i in order[:k])
        return [d for d in domains if d not in test], test

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """Leave ∇F(θ) + β∇G(θ') (first order) or the full meta-gradient (second order) in `.grad`."""
        cfg = self.cfg
        train, test = self.split(sorted(batches))
        self.last_split = (train, test)
        batch_tr = Batch.cat([batches[d] for d in train])
        batch_te = Batch.cat([batches[d] for d in test])
        if not cfg.meta_test_shared:
            batch_te = batch_te.select(~batch_te.shared_mask())
        names, params = list(self.params), list(self.params.values())

        loss_f = self.loss(batch_tr)
        # Only trainable parameters take part in the virtual step: the frozen
        # backbone is shared by reference through functional_call, never copied.
        grads = self.reduce(torch.autograd.grad(loss_f, params, create_graph=not cfg.first_order, allow_unused=True))
        virtual = {
            n: p if g is None else p - cfg.alpha * (g.detach() if cfg.first_order else g)
            for n, p, g in zip(names, params, grads)
        }
        loss_g = self.loss(batch_te, virtual)
        if cfg.first_order:
            accumulate_grad(self.params, dict(zip(names, grads)))
            (cfg.beta * loss_g).backward()
        else:
            try:
                (loss_f + cfg.beta * loss_g).backward()
            except RuntimeError as exc:
                if any(k in str(exc) for k in ("derivative for", "double backward", "differentiate twice")):
                    raise RuntimeError(
                        "second-order MLDG needs a twice-differentiable attention kernel; the fused one "
                        "refused. Set model.backbone.attn_implementation: eager (or first_order: true). "
                        f"Original error: {exc}"
                    ) from exc
                raise
        f, g = float(loss_f.detach()), float(loss_g.detach())
        return {"loss": f + cfg.beta * g, "loss_meta_train": f, "loss_meta_test": g}

"""Empirical risk minimisation over the pooled source-domain batches."""

from __future__ import annotations

from collections.abc import Mapping

from metadg.algorithms.base import Algorithm
from metadg.registry import ALGORITHMS
from metadg.engine.batch import Batch


@ALGORITHMS.register("erm")
class ERM(Algorithm):
    """Pool every domain's batch and minimise the mean loss (the standard baseline)."""

    def update(self, batches: Mapping[str, Batch]) -> dict[str, float]:
        """One forward/backward over the concatenated domain batches."""
        loss = self.loss(Batch.cat(list(batches.values())))
        loss.backward()
        return {"loss": float(loss.detach())}

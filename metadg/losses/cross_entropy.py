"""`cross_entropy`: softmax cross-entropy on the head's logits, optionally class-weighted."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from metadg.losses.base import Loss
from metadg.registry import LOSSES


@LOSSES.register("cross_entropy")
class CrossEntropy(Loss):
    """Softmax cross-entropy (class weights from train.class_weights); the default."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean (class-weighted) cross-entropy."""
        weight = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits, labels, weight=weight)

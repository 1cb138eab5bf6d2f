"""`am_softmax`: additive-margin softmax (Wang et al. 2018) on cosines to learned class directions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from metadg.config import StrictModel
from metadg.losses.base import Loss
from metadg.registry import LOSSES


class AMSoftmaxConfig(StrictModel):
    """Cosine logits s·cos θ_c; training subtracts the margin m from the true class's cosine."""

    scale: float = Field(30.0, gt=0, description="scale s of the cosine logits (Wang et al. 2018: 30)")
    margin: float = Field(0.35, ge=0, lt=1, description="additive margin m on the true class's cosine (paper: 0.35)")


class _Cosines(nn.Module):
    # One learned direction per class; logits s·cos θ_c (no margin: what scoring sees).
    def __init__(self, embed_dim: int, num_classes: int, scale: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(num_classes, embed_dim))
        self.scale = scale

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(embedding, dim=1) @ F.normalize(self.w, dim=1).T


@LOSSES.register("am_softmax")
class AMSoftmax(Loss):
    """Cross-entropy of s·(cos θ_c − m·[c = y]): the true class must win by a cosine margin."""

    Config = AMSoftmaxConfig

    def output_layer(self, embed_dim: int) -> nn.Module:
        """Scaled cosines to one learned direction per class."""
        return _Cosines(embed_dim, self.num_classes, self.cfg.scale)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(Class-weighted) cross-entropy with the margin taken off the true class's scaled cosine."""
        margin = self.cfg.scale * self.cfg.margin * F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        weight = None if self.weight is None else self.weight.to(logits.device)
        return F.cross_entropy(logits - margin, labels, weight=weight)

"""`oc_softmax`: one-class softmax (Zhang, Jiang, Duan, IEEE SPL 2021) for two-class detection."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from metadg.config import StrictModel
from metadg.losses.base import Loss, weighted_mean
from metadg.registry import LOSSES


class OCSoftmaxConfig(StrictModel):
    """Compact target class, spoofs pushed away: margins on the cosine to one learned direction."""

    alpha: float = Field(20.0, gt=0, description="scale α of the margins (paper: 20)")
    m_target: float = Field(0.9, ge=-1, le=1, description="margin m0 of the target class: its cosine should exceed it")
    m_other: float = Field(0.2, ge=-1, le=1, description="margin m1 of the other class: its cosine should stay below")
    target_class: int = Field(1, ge=0, le=1, description="label of the compact class (1 = bona fide in the spoof task)")


class _Direction(nn.Module):
    # The one learned direction; logits [0, cos] (or [cos, 0]) so the log-odds of the target class is the cosine.
    def __init__(self, embed_dim: int, target: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(embed_dim))
        self.target = target

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(embedding, dim=1) @ F.normalize(self.w, dim=0)
        zeros = torch.zeros_like(cos)
        return torch.stack([zeros, cos] if self.target == 1 else [cos, zeros], dim=1)


@LOSSES.register("oc_softmax")
class OCSoftmax(Loss):
    """One-class softmax: loss log(1 + exp(α(m0 − cos))) for the target class, log(1 + exp(α(cos − m1))) else."""

    Config = OCSoftmaxConfig

    def __init__(self, cfg: OCSoftmaxConfig, num_classes: int, weight: torch.Tensor | None = None) -> None:
        if num_classes != 2:
            raise ValueError(f"loss oc_softmax is for two classes; this task has {num_classes}")
        super().__init__(cfg, num_classes, weight)

    def output_layer(self, embed_dim: int) -> nn.Module:
        """Cosine to one learned direction, as the target class's log-odds."""
        return _Direction(embed_dim, self.cfg.target_class)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The paper's loss, from the cosine the output layer put in the logits."""
        t = self.cfg.target_class
        cos = logits[:, t] - logits[:, 1 - t]
        is_target = labels == t
        margin = torch.where(is_target, self.cfg.m_target - cos, cos - self.cfg.m_other)
        return weighted_mean(F.softplus(self.cfg.alpha * margin), self.sample_weights(labels))

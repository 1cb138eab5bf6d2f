"""Loss contract: a criterion on (N, C) logits, and optionally the output layer that makes those logits.

Margin losses (OC-softmax, AM-softmax) score with cosines to learned class directions
instead of a linear layer. Such a loss supplies `output_layer`: the model then maps its
utterance embedding through that layer (the head's own output layer is frozen), so the
logits every task and scoring path sees are the loss's own scores, and a task reading
two-class log-odds reads the loss's score.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from pydantic import BaseModel
from torch import nn

from metadg.config import StrictModel


class Loss(nn.Module, ABC):
    """The training criterion of an experiment (`loss: {name: ...}`)."""

    Config: type[BaseModel] = StrictModel

    def __init__(self, cfg: BaseModel, num_classes: int, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.weight = weight  # per-class weights (train.class_weights), or None

    def output_layer(self, embed_dim: int) -> nn.Module | None:
        """The module mapping (B, embed_dim) embeddings to (B, C) logits; None keeps the head's output layer."""
        return None

    @abstractmethod
    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss of (B, C) logits against integer labels."""

    def sample_weights(self, labels: torch.Tensor) -> torch.Tensor | None:
        """Each sample's class weight, or None without class weights."""
        return None if self.weight is None else self.weight.to(labels.device)[labels]


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample losses, weighted as cross-entropy weights classes (Σ w·l / Σ w)."""
    if weights is None:
        return values.mean()
    return (weights * values).sum() / weights.sum()

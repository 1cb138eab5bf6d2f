"""A backbone followed by a head: the model every algorithm trains."""

from __future__ import annotations

import torch
from torch import nn

from metadg.config import Plugin


class Classifier(nn.Module):
    """Waveforms → (B, C) logits; what a logit means is the task's business."""

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) → (B, C) logits."""
        feats, mask = self.backbone(inputs, lengths)
        return self.head(feats, mask)

    @staticmethod
    def score_from_logits(logits: torch.Tensor) -> torch.Tensor:
        """Class-1 minus class-0 logit of a two-class model (the spoof task's bona fide log-odds)."""
        return logits[:, 1] - logits[:, 0]


def build_model(backbone: Plugin, head: Plugin, num_classes: int = 2) -> Classifier:
    """Instantiate backbone and head from their validated plugin configs."""
    bb = backbone.build()
    return Classifier(bb, head.build(bb.out_dim, num_classes), num_classes)

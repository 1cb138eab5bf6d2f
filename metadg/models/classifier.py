"""A backbone followed by a head: the model every algorithm trains."""

from __future__ import annotations

import torch
from torch import nn

from metadg.config import Plugin


class Classifier(nn.Module):
    """Waveforms → (B, C) logits, and on request the (B, D) utterance embedding they come from.

    Every head splits into `embed` (pooling to one vector per utterance) and `classify`
    (the output layer), so feature-level algorithms (CORAL, MMD, DANN, mixup of
    embeddings, MIRO) read the embedding without a second forward pass.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, num_classes: int = 2) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_classes = num_classes
        #: a loss's own output layer (margin losses) replacing the head's; None: the head's
        self.output: nn.Module | None = None

    @property
    def embed_dim(self) -> int:
        """Width of the utterance embedding."""
        return self.head.embed_dim

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None,
                with_embedding: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """(B, T) → (B, C) logits; with_embedding: (logits, (B, D) embedding)."""
        feats, mask = self.backbone(inputs, lengths)
        if not hasattr(self.head, "embed"):  # a third-party head without the split: logits only
            if with_embedding:
                raise TypeError(f"head {type(self.head).__name__} has no embed()/classify() split; "
                                "this algorithm needs utterance embeddings")
            return self.head(feats, mask)
        embedding = self.head.embed(feats, mask)
        logits = self.head.classify(embedding) if self.output is None else self.output(embedding)
        return (logits, embedding) if with_embedding else logits

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, D) utterance embeddings → (B, C) logits, through the loss's output layer if it has one."""
        return self.head.classify(embedding) if self.output is None else self.output(embedding)

    def embed(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) → (B, D) utterance embeddings."""
        feats, mask = self.backbone(inputs, lengths)
        return self.head.embed(feats, mask)

    @staticmethod
    def score_from_logits(logits: torch.Tensor) -> torch.Tensor:
        """Class-1 minus class-0 logit of a two-class model (its log-odds of class 1)."""
        return logits[:, 1] - logits[:, 0]


def build_model(backbone: Plugin, head: Plugin, num_classes: int = 2) -> Classifier:
    """Instantiate backbone and head from their validated plugin configs."""
    bb = backbone.build()
    return Classifier(bb, head.build(bb.out_dim, num_classes), num_classes)

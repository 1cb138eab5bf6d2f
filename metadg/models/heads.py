"""Classification heads over frame features: `embed` pools an utterance embedding, `classify` maps it to logits."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from metadg.config import StrictModel
from metadg.registry import HEADS


def masked_mean(feats: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over frames, ignoring padded frames when a mask is given."""
    if mask is None:
        return feats.mean(dim=1)
    m = mask.to(feats.dtype).unsqueeze(-1)
    return (feats * m).sum(1) / m.sum(1).clamp_min(1.0)


class LinearHeadConfig(StrictModel):
    """Mean pooling followed by dropout and one linear layer."""

    dropout: float = Field(0.0, ge=0, lt=1, description="dropout before the linear layer")


@HEADS.register("linear")
class LinearHead(nn.Module):
    """Mean-pooled features → linear classifier."""

    Config = LinearHeadConfig

    def __init__(self, cfg: LinearHeadConfig, in_dim: int, num_classes: int = 2) -> None:
        super().__init__()
        self.dropout = nn.Dropout(cfg.dropout)
        self.proj = nn.Linear(in_dim, num_classes)

    @property
    def output_layer(self) -> nn.Module:
        """The final layer, frozen when a margin loss brings its own."""
        return self.proj

    @property
    def embed_dim(self) -> int:
        """Width of the utterance embedding (the pooled features)."""
        return self.proj.in_features

    def forward(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H) features → (B, num_classes) logits."""
        return self.classify(self.embed(feats, mask))

    def embed(self, feats: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, F, H) features → (B, H) utterance embedding: the mean over valid frames."""
        return masked_mean(feats, mask)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """(B, H) utterance embeddings → (B, num_classes) logits."""
        return self.proj(self.dropout(embedding))

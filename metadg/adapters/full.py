"""Full fine-tuning: every backbone parameter trains."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from metadg.adapters.base import Adapter
from metadg.config import StrictModel
from metadg.registry import ADAPTERS


class FullConfig(StrictModel):
    """Options of full fine-tuning."""

    freeze_feature_encoder: bool = Field(False, description="keep the convolutional feature encoder frozen")


@ADAPTERS.register("full")
class FullFineTune(Adapter):
    """Train the whole backbone and the head."""

    Config = FullConfig

    def apply(self, model: nn.Module) -> None:
        """Make every parameter trainable (except the CNN encoder if asked)."""
        for p in model.parameters():
            p.requires_grad_(True)
        if self.cfg.freeze_feature_encoder:
            encoder = getattr(model.backbone.hf_model, "feature_extractor", None)
            if encoder is None:
                raise ValueError("adapter.freeze_feature_encoder: this backbone has no feature_extractor")
            for p in encoder.parameters():
                p.requires_grad_(False)

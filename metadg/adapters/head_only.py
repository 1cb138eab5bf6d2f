"""Linear probing: the backbone stays frozen, only the head trains."""

from __future__ import annotations

from torch import nn

from metadg.adapters.base import Adapter, freeze_all_but_new
from metadg.registry import ADAPTERS


@ADAPTERS.register("head_only")
class HeadOnly(Adapter):
    """Freeze the backbone; train the head (and learned layer weights)."""

    def apply(self, model: nn.Module) -> None:
        """Freeze everything but the head."""
        freeze_all_but_new(model)

"""Model plugins: backbones (registry MODELS) and heads (registry HEADS)."""

from metadg.models import aasist, aasist_raw, backbones, heads, lcnn, rawnet2  # noqa: F401  registers plugins
from metadg.models.classifier import Classifier, build_model

__all__ = ["Classifier", "build_model"]

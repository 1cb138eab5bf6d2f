"""Algorithm plugins: how gradients are formed from per-domain batches."""

from metadg.algorithms import erm, mldg  # noqa: F401  registers plugins
from metadg.algorithms.base import Algorithm

__all__ = ["Algorithm"]

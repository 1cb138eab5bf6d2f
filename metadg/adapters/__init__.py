"""Adapter plugins: which parameters of the backbone train, and how."""

from metadg.adapters import full, head_only, lora  # noqa: F401  registers plugins
from metadg.adapters.base import Adapter

__all__ = ["Adapter"]

"""Algorithm plugins: one module per algorithm, each registering itself in ALGORITHMS."""

import importlib
import pkgutil

from metadg.algorithms.base import Algorithm

# Every module of this package is a built-in algorithm: importing it registers it.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Algorithm"]

"""Loss plugins: the training objective and, for margin losses, the output layer whose logits it implies."""

import importlib
import pkgutil

from metadg.losses.base import Loss

# Every module of this package is a built-in loss: importing it registers it.
for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["Loss"]

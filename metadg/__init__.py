"""metadg: meta-learning / domain generalization with pluggable adaptation."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from metadg.config import ConfigError, Experiment, load_config
from metadg.registry import ADAPTERS, ALGORITHMS, HEADS, MODELS, TASKS, Registry

if TYPE_CHECKING:
    from metadg.engine.trainer import RunResult

__version__ = "0.2.0"
__all__ = ["ADAPTERS", "ALGORITHMS", "HEADS", "MODELS", "TASKS", "ConfigError", "Experiment", "Registry", "load_config", "run"]

#: modules that moved, old name → new name: old imports keep working, with a DeprecationWarning
MOVED_MODULES = {
    "metadg.training": "metadg.engine.trainer",
    "metadg.batcher": "metadg.engine.batcher",
    "metadg.selection": "metadg.engine.selection",
    "metadg.checkpoint": "metadg.engine.checkpoint",
    "metadg.resume": "metadg.engine.resume",
    "metadg.distributed": "metadg.engine.distributed",
    "metadg.params": "metadg.engine.accounting",
    "metadg.evaluation": "metadg.engine.evaluate",
    "metadg.metrics": "metadg.tasks.spoof.metrics",
    "metadg.calibration": "metadg.tasks.spoof.calibration",
    "metadg.plots": "metadg.tasks.spoof.plots",
    "metadg.tasks.spoof.audio": "metadg.tasks.audio.loading",
    "metadg.tasks.spoof.file_corpus": "metadg.tasks.audio.file_corpus",
    "metadg.tasks.spoof.list_corpus": "metadg.tasks.audio.list_corpus",
    "metadg.tasks.spoof.corpora": "metadg.tasks.spoof.synthetic_corpus",
    "metadg.tracking_journal": "metadg.tracking.journal",
    "metadg.tracking_upload": "metadg.tracking.upload",
    "metadg.search_space": "metadg.search.space",
    "metadg.search_storage": "metadg.search.storage",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    # Last on sys.meta_path: consulted only when no file of the old name exists.
    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> object:
        new = MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module: object) -> None:
        pass  # the new module is already executed


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def run(config: str | Path | Experiment, overrides: list[str] | None = None) -> RunResult:
    """Train and evaluate one experiment (a YAML path or a loaded Experiment)."""
    from metadg.engine.trainer import Trainer

    exp = config if isinstance(config, Experiment) else load_config(config, overrides)
    return Trainer(exp).fit()

"""metadg: meta-learning / domain generalization with pluggable adaptation."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from metadg.config import ConfigError, Experiment, load_config
from metadg.registry import ADAPTERS, ALGORITHMS, HEADS, MODELS, TASKS, Registry

if TYPE_CHECKING:
    from metadg.training import RunResult

__version__ = "0.1.0"
__all__ = ["ADAPTERS", "ALGORITHMS", "HEADS", "MODELS", "TASKS", "ConfigError", "Experiment", "Registry", "load_config", "run"]


def run(config: str | Path | Experiment, overrides: list[str] | None = None) -> RunResult:
    """Train and evaluate one experiment (a YAML path or a loaded Experiment)."""
    from metadg.training import Trainer

    exp = config if isinstance(config, Experiment) else load_config(config, overrides)
    return Trainer(exp).fit()

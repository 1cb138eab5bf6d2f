"""Experiment assembly: the top-level sections of one YAML file validated into an Experiment."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from metadg.config.compose import apply_overrides, expand_vars, load_raw
from metadg.config.plugins import Plugin, format_validation_error, validate_plugin
from metadg.config.names import nested_name
from metadg.config.schema import ConfigError, TrackingConfig, TrainConfig

BENCH_KEYS = ("grid", "variants", "search", "benchmark")


@dataclass
class Experiment:
    """A fully validated experiment."""

    seed: int
    name: str
    output_dir: str
    task: Plugin
    backbone: Plugin
    head: Plugin
    adapter: Plugin
    algorithm: Plugin
    train: TrainConfig
    tracking: TrackingConfig
    source: str = "<dict>"
    loss: Plugin | None = None  # None: cross_entropy (experiments built before losses were plugins)
    init_from: str | None = None  # a trained run (or checkpoint folder) whose weights the model starts from

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in); reloading it gives the same Experiment."""
        return {
            "name": self.name,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "task": self.task.as_dict(),
            # init_from only when set: configs without it keep the ids their finished runs are found by.
            "model": {"backbone": self.backbone.as_dict(), "head": self.head.as_dict(),
                      **({"init_from": self.init_from} if self.init_from is not None else {})},
            "adapter": self.adapter.as_dict(),
            "algorithm": self.algorithm.as_dict(),
            **({"loss": self.loss.as_dict()} if self.loss is not None else {}),
            "train": self.train.model_dump(mode="json"),
            "tracking": self.tracking.model_dump(mode="json"),
        }


def _package() -> Any:
    # The registries are read from the package at call time, so `metadg.config.ALGORITHMS` (and the
    # others) stays the one name to replace, as when the config was one module (tests swap in a fresh one).
    import metadg.config

    return metadg.config


def _names(registry: str) -> str:
    """'erm|mldg|...': the plugins of a registry registered now (called when a help text is read, not at import)."""
    return "|".join(getattr(_package(), registry).names())


class _SectionHelp(Mapping[str, str]):
    """Top-level key → help text; a text given as a function is built each time it is read."""

    def __init__(self, texts: dict[str, str | Callable[[], str]]) -> None:
        self._texts = texts

    def __getitem__(self, key: str) -> str:
        text = self._texts[key]
        return text if isinstance(text, str) else text()

    def __contains__(self, key: object) -> bool:  # without building a text
        return key in self._texts

    def __iter__(self) -> Iterator[str]:
        return iter(self._texts)

    def __len__(self) -> int:
        return len(self._texts)


# Plugin lists come from the registries: importing their built-ins here would be an import cycle.
TOP_KEYS: Mapping[str, str] = _SectionHelp({
    "name": "run name (default: derived from the file name)",
    "seed": "seed for Python, NumPy, torch and the domain splits",
    "output_dir": "folder that receives one sub-folder per run",
    "task": "the DG problem: {name: ..., ...}",
    "model": "{backbone: {name: ...}, head: {name: ...}, init_from: <trained run folder> (optional)}",
    "adapter": lambda: f"which parameters train: {{name: {_names('ADAPTERS')}, ...}}",
    "algorithm": lambda: f"how gradients are formed: {{name: {_names('ALGORITHMS')}, ...}}",
    "loss": lambda: f"the training objective: {{name: {_names('LOSSES')}, ...}} (default cross_entropy)",
    "train": "optimisation schedule",
    "tracking": "MLflow settings",
})


def _validate_section(model: type[BaseModel], raw: Any, where: str) -> Any:
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, model)) from None


def build_experiment(data: dict[str, Any], source: str = "<dict>", default_name: str = "run") -> Experiment:
    """Validate a merged config mapping into an Experiment; errors name the source and key."""
    try:
        return _build(data, default_name, source)
    except ConfigError as exc:
        if source == "<dict>" or str(exc).startswith(source):
            raise
        raise ConfigError(f"{source}: {exc}") from None


def _build(data: dict[str, Any], default_name: str, source: str) -> Experiment:
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections, got {type(data).__name__}")
    bench = [k for k in BENCH_KEYS if k in data]
    if bench:
        raise ConfigError(f"{bench[0]}: this is a benchmark file; run it with `metadg bench`")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(TOP_KEYS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{unknown[0]}: unknown key{hint} (valid: {', '.join(TOP_KEYS)})")
    for key in ("task", "adapter", "algorithm", "model"):
        if key not in data:
            raise ConfigError(f"{key}: missing section ({TOP_KEYS[key]})")
    model = data["model"]
    if not isinstance(model, dict):
        raise ConfigError("model: expected {backbone: {...}, head: {...}}")
    extra = [k for k in model if k not in ("backbone", "head", "init_from")]
    if extra:
        raise ConfigError(f"model.{extra[0]}: unknown key (valid: backbone, head, init_from)")
    init_from = model.get("init_from")
    if init_from is not None and (not isinstance(init_from, str) or not init_from.strip()):
        raise ConfigError(f"model.init_from: expected the path of a trained run folder, got {init_from!r}")
    data = _moved_keys(data)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed: must be an integer from 0 to 2**63 - 1 (got {seed!r})")
    name = data.get("name") or default_name
    output_dir = data.get("output_dir", "runs")
    if not isinstance(name, str) or not isinstance(output_dir, str):
        raise ConfigError("name and output_dir must be strings")
    # The run folder is output_dir/name: a name may nest folders (benchmarks do) but not leave output_dir.
    nested_name(name, "name")
    registries = _package()
    return Experiment(
        seed=seed,
        name=name,
        output_dir=output_dir,
        task=validate_plugin(registries.TASKS, data["task"], "task"),
        backbone=validate_plugin(registries.MODELS, model.get("backbone", {"name": "ssl"}), "model.backbone"),
        head=validate_plugin(registries.HEADS, model.get("head", {"name": "linear"}), "model.head"),
        adapter=validate_plugin(registries.ADAPTERS, data["adapter"], "adapter"),
        algorithm=validate_plugin(registries.ALGORITHMS, data["algorithm"], "algorithm"),
        train=_validate_section(TrainConfig, data.get("train"), "train"),
        tracking=_validate_section(TrackingConfig, data.get("tracking"), "tracking"),
        source=source,
        loss=validate_plugin(registries.LOSSES, data.get("loss", {"name": "cross_entropy"}), "loss"),
        init_from=init_from,
    )


def _moved_keys(data: dict[str, Any]) -> dict[str, Any]:
    # Keys that moved keep working: train.bonafide_fraction is now the spoof task's (its sampling policy).
    train = data.get("train")
    if isinstance(train, dict) and "bonafide_fraction" in train:
        task = data.get("task")
        if not isinstance(task, dict) or task.get("name") != "spoof_detection":
            raise ConfigError("train.bonafide_fraction: moved to task.bonafide_fraction, which only the "
                              "spoof_detection task has (its sampling policy)")
        data = {**data, "train": {k: v for k, v in train.items() if k != "bonafide_fraction"}}
        if "bonafide_fraction" not in task:
            data["task"] = {**task, "bonafide_fraction": train["bonafide_fraction"]}
        logging.getLogger(__name__).warning("train.bonafide_fraction is deprecated: write task.bonafide_fraction")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Experiment:
    """Load, merge, override and validate an experiment YAML file."""
    path = Path(path)
    raw = load_raw(path)
    try:
        data = expand_vars(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return build_experiment(data, source=str(path), default_name=path.stem)

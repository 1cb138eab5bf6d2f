"""The `search:` block of a search YAML: validated distributions, sampler, pruner, budget, storage."""

from __future__ import annotations

import warnings

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator

from metadg.config import (
    BENCH_KEYS,
    ConfigError,
    Experiment,
    StrictModel,
    _validate_section,
    apply_overrides,
    build_experiment,
    expand_vars,
    load_raw,
    nested_name,
)
from metadg.registry import PRUNERS, SAMPLERS, Registry, unknown_name_message

Scalar = str | int | float | bool | None


class FloatParam(StrictModel):
    """A real-valued hyperparameter in [low, high]."""

    type: Literal["float"]
    low: float = Field(description="smallest value")
    high: float = Field(description="largest value")
    log: bool = Field(False, description="sample on a log scale (low must be > 0)")
    step: float | None = Field(None, gt=0, description="discretisation step; not with log")


class IntParam(StrictModel):
    """An integer hyperparameter in [low, high]."""

    type: Literal["int"]
    low: int = Field(description="smallest value")
    high: int = Field(description="largest value")
    log: bool = Field(False, description="sample on a log scale (low must be >= 1)")
    step: int = Field(1, ge=1, description="spacing of the values; must be 1 with log")


class CategoricalParam(StrictModel):
    """One of a list of plain values (strings, numbers, booleans, null)."""

    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1, description="the values to choose from")


PARAM_TYPES: dict[str, type[StrictModel]] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}
Param = FloatParam | IntParam | CategoricalParam


@SAMPLERS.register("tpe")
class TpeSampler(StrictModel):
    """Tree-structured Parzen estimator (Optuna's default)."""

    name: Literal["tpe"] = "tpe"
    seed: int | None = Field(None, description="sampler seed; default: the experiment's seed")
    n_startup_trials: int = Field(10, ge=0, description="random trials before TPE takes over")
    multivariate: bool = Field(False, description="model the parameters jointly")

    def build(self, seed: int) -> Any:
        """The Optuna sampler."""
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate)


@SAMPLERS.register("random")
class RandomSampler(StrictModel):
    """Independent uniform sampling."""

    name: Literal["random"] = "random"
    seed: int | None = Field(None, description="sampler seed; default: the experiment's seed")

    def build(self, seed: int) -> Any:
        """The Optuna sampler."""
        import optuna

        return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("cmaes")
class CmaEsSampler(StrictModel):
    """CMA-ES (numeric parameters only)."""

    name: Literal["cmaes"] = "cmaes"
    seed: int | None = Field(None, description="sampler seed; default: the experiment's seed")
    n_startup_trials: int = Field(1, ge=0, description="random trials before CMA-ES takes over")

    def build(self, seed: int) -> Any:
        """The Optuna sampler."""
        import optuna

        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=self.n_startup_trials)


@PRUNERS.register("median")
class MedianPruner(StrictModel):
    """Stop a trial whose best value so far is worse than the median of earlier trials at the same step."""

    name: Literal["median"] = "median"
    n_startup_trials: int = Field(5, ge=0, description="trials that finish before any is pruned")
    n_warmup_steps: int = Field(0, ge=0, description="training steps before a trial may be pruned")
    interval_steps: int = Field(1, ge=1, description="check every N reported steps")

    def build(self) -> Any:
        """The Optuna pruner."""
        import optuna

        return optuna.pruners.MedianPruner(self.n_startup_trials, self.n_warmup_steps, self.interval_steps)


@PRUNERS.register("hyperband")
class HyperbandPruner(StrictModel):
    """Hyperband over training steps."""

    name: Literal["hyperband"] = "hyperband"
    min_resource: int = Field(1, ge=1, description="fewest training steps a trial gets")
    max_resource: int | Literal["auto"] = Field("auto", description="most training steps; auto = from finished trials")
    reduction_factor: int = Field(3, ge=2, description="keep 1/reduction_factor of the trials per rung")

    def build(self) -> Any:
        """The Optuna pruner."""
        import optuna

        return optuna.pruners.HyperbandPruner(self.min_resource, self.max_resource, self.reduction_factor)


@PRUNERS.register("none")
class NoPruner(StrictModel):
    """Never prune."""

    name: Literal["none"] = "none"

    def build(self) -> Any:
        """The Optuna pruner."""
        import optuna

        return optuna.pruners.NopPruner()


class SearchConfig(StrictModel):
    """Everything under `search:` except `params`, `sampler` and `pruner` (validated separately)."""

    params: dict[str, Any]
    sampler: Any = "tpe"
    pruner: Any = "median"
    objective: str | None = Field(None, description="dev metric to optimise; default: the task's selection metric")
    direction: Literal["minimize", "maximize"] | None = Field(
        None, description="whether the objective is minimised or maximised; default: the task's direction for that metric")
    n_trials: int | None = Field(None, ge=1, description="finished (COMPLETE or PRUNED) trials the study should hold")
    timeout: float | None = Field(None, gt=0, description="seconds after which this command starts no new trial")
    storage: str | None = Field(None, description="SQLAlchemy URL or journal:PATH; default sqlite in the study folder")
    study_name: str | None = Field(None, description="default: the experiment's name")

    @field_validator("study_name")
    @classmethod
    def _folder_name(cls, value: str | None) -> str | None:
        # The study folder is output_dir/study_name: it may nest, never leave output_dir.
        return None if value is None else nested_name(value, "study_name")
    heartbeat_interval: int = Field(60, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int | None = Field(None, ge=1, description="seconds without heartbeat before a trial is failed; default 2 × interval")
    enqueue_default: bool = Field(True, description="run the config's own values as the first trial, when inside the space")


@dataclass
class SearchSpec:
    """A validated search file: the base experiment mapping, its space and the study's settings."""

    source: str
    raw: dict[str, Any]
    base: Experiment
    params: dict[str, Param]
    sampler: StrictModel
    pruner: StrictModel
    cfg: SearchConfig

    def task(self) -> Any:
        """The base experiment's task (cheap: a task reads no data when built)."""
        return self.base.task.build(seed=self.base.seed)

    @property
    def objective(self) -> str:
        """The dev metric that is optimised."""
        return self.cfg.objective or self.task().selection_metric

    @property
    def direction(self) -> str:
        """'minimize' or 'maximize': as configured, else the task's direction for the objective."""
        if self.cfg.direction is not None:
            return self.cfg.direction
        return "maximize" if self.task().direction(self.objective) == "max" else "minimize"

    @property
    def study_name(self) -> str:
        """Study name in the storage; also the study folder's name."""
        return self.cfg.study_name or self.base.name

    @property
    def study_dir(self) -> Path:
        """Folder of the study: default storage, one run folder per trial, best.yaml."""
        return Path(self.base.output_dir) / self.study_name

    @property
    def storage_url(self) -> str:
        """Where the study lives: the configured URL or sqlite:///<study_dir>/study.db."""
        return self.cfg.storage or f"sqlite:///{(self.study_dir / 'study.db').resolve()}"

    @property
    def grace_period(self) -> int:
        """Seconds without a heartbeat after which a RUNNING trial is failed."""
        return self.cfg.grace_period or 2 * self.cfg.heartbeat_interval

    def experiment(self, params: dict[str, Any], name: str | None = None) -> Experiment:
        """The experiment with `params` applied as `-o key=value` overrides, validated like any config."""
        data = apply_overrides(self.raw, overrides_for(params))
        if name is not None:
            data["name"] = name
        return build_experiment(expand_vars(data), source=self.source, default_name=self.base.name)

    def default_values(self) -> dict[str, Any] | None:
        """The base config's value of every searched key, or None if one lies outside its distribution."""
        resolved = self.base.to_dict()
        values = {}
        for key, param in self.params.items():
            value = _lookup(resolved, key)
            if value is _MISSING or not contains(param, value):
                return None
            values[key] = value
        return values


_MISSING = object()


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.lstrip("-").isdigit() and -len(data) <= int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def contains(param: Param, value: Any) -> bool:
    """Whether `value` can be sampled from `param`."""
    if isinstance(param, CategoricalParam):
        return any(value == c and type(value) is type(c) for c in param.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(param, IntParam) and not float(value).is_integer():
        return False
    if not param.low <= value <= param.high:
        return False
    if param.step is None or param.log:
        return True
    ticks = (value - param.low) / param.step
    return math.isclose(ticks, round(ticks), abs_tol=1e-9)


def yaml_scalar(value: Any) -> str:
    """A value written so that yaml.safe_load reads it back unchanged (1e-05 → 1.0e-05, '1' → "'1'")."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()


def overrides_for(params: dict[str, Any]) -> list[str]:
    """The `-o` overrides that apply sampled values: ['train.lr=0.003', ...]."""
    return [f"{key}={yaml_scalar(value)}" for key, value in params.items()]


def _plugin(registry: Registry[Any], raw: Any, where: str) -> StrictModel:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a name or a mapping with a 'name' key, got {type(raw).__name__}")
    name = raw.get("name")
    if name not in registry:
        raise ConfigError(f"{where}.name: {unknown_name_message(registry.kind, name, registry.names())}")
    return _validate_section(registry.get(name), raw, where)


def _param(raw: Any, where: str) -> Param:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping like {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}")
    kind = raw.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {unknown_name_message('distribution', kind, list(PARAM_TYPES))}")
    param = _validate_section(PARAM_TYPES[kind], raw, where)
    if isinstance(param, CategoricalParam):
        return param
    if param.low > param.high:
        raise ConfigError(f"{where}.low: {param.low!r} is above high ({param.high!r})")
    if param.log and param.low <= 0:
        raise ConfigError(f"{where}.low: must be > 0 with log: true (got {param.low!r})")
    if param.log and isinstance(param, FloatParam) and param.step is not None:
        raise ConfigError(f"{where}.step: cannot be combined with log: true")
    if param.log and isinstance(param, IntParam) and param.step != 1:
        raise ConfigError(f"{where}.step: must be 1 with log: true (got {param.step})")
    return param


def parse_block(block: Any, seed: int) -> tuple[dict[str, Param], StrictModel, StrictModel, SearchConfig]:
    """Validate a `search:` mapping; every error names its key (e.g. `search.params.train.lr.low`)."""
    if not isinstance(block, dict):
        raise ConfigError("search: expected a mapping with params:, n_trials:, ...")
    cfg = _validate_section(SearchConfig, block, "search")
    if not isinstance(cfg.params, dict) or not cfg.params:
        raise ConfigError("search.params: expected a non-empty mapping of dotted config key → distribution")
    params = {key: _param(raw, f"search.params.{key}") for key, raw in cfg.params.items()}
    sampler = _plugin(SAMPLERS, cfg.sampler, "search.sampler")
    pruner = _plugin(PRUNERS, cfg.pruner, "search.pruner")
    if sampler.seed is None:
        sampler = sampler.model_copy(update={"seed": seed})
    if isinstance(sampler, CmaEsSampler):
        categorical = [k for k, p in params.items() if isinstance(p, CategoricalParam)]
        if categorical:
            raise ConfigError(f"search.sampler: cmaes samples numeric parameters only; search.params.{categorical[0]} "
                              "is categorical (use tpe or random, or make it int/float)")
    if cfg.n_trials is None and cfg.timeout is None:
        raise ConfigError("search: set n_trials and/or timeout, or the study never ends")
    if cfg.storage is not None and not (cfg.storage.startswith("journal:") or "://" in cfg.storage):
        raise ConfigError(f"search.storage: {cfg.storage!r} is neither a SQLAlchemy URL (sqlite:///study.db, "
                          "postgresql://user:pw@host/db, mysql+pymysql://...) nor journal:PATH")
    return params, sampler, pruner, cfg


def _bounds(param: Param) -> list[Any]:
    if isinstance(param, CategoricalParam):
        return list(param.choices)
    return [param.low, param.high]


def load_search(path: str | Path, overrides: list[str] | None = None) -> SearchSpec:
    """Read a search YAML (an experiment plus `search:`); `-o` overrides may also target `search.*`."""
    path = Path(path)
    raw = apply_overrides(load_raw(path), overrides)
    block = raw.pop("search", None)
    if block is None:
        raise ConfigError(f"{path}: search: missing; a search file is an experiment YAML plus a `search:` block")
    other = [k for k in BENCH_KEYS if k in raw]
    if other:
        raise ConfigError(f"{path}: {other[0]}: not allowed in a search file (search one experiment at a time)")
    base = build_experiment(expand_vars(raw), source=str(path), default_name=path.stem)
    raw.setdefault("name", base.name)
    try:
        params, sampler, pruner, cfg = parse_block(block, base.seed)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    spec = SearchSpec(str(path), raw, base, params, sampler, pruner, cfg)
    # Every value a trial could get must make a valid experiment; checking the
    # bounds (and each choice) now turns a bad space into an error before training.
    for key, param in params.items():
        which = "choices" if isinstance(param, CategoricalParam) else None
        for i, value in enumerate(_bounds(param)):
            where = f"search.params.{key}.{which or ('low', 'high')[i]}" + (f".{i}" if which else "")
            try:
                spec.experiment({key: value})
            except ConfigError as exc:
                detail = str(exc).removeprefix(f"{path}: ")
                raise ConfigError(f"{path}: {where}: {key}={yaml_scalar(value)} is not a valid config: {detail}") from None
    return spec

"""Experiment configuration: YAML → includes → overrides → validated, typed config."""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import logging

from metadg.registry import ADAPTERS, ALGORITHMS, HEADS, MODELS, SCHEDULES, SELECTIONS, TASKS, Registry, unknown_name_message

BENCH_KEYS = ("grid", "variants", "search", "benchmark")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: values a YAML document may hold once aliases are expanded; a paper grid holds a few thousand
MAX_YAML_NODES = 100_000
#: characters that ${var} expansion may produce in one config
MAX_EXPANDED_CHARS = 1_000_000


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the dotted key."""


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def registered(registry: Registry[Any], value: Any) -> Any:
    """A pydantic check that `value` names a plugin of `registry` (did-you-mean error otherwise)."""
    if not isinstance(value, str) or value not in registry:
        raise ValueError(unknown_name_message(registry.kind, value, registry.names()))
    return value


class SelectionConfig(StrictModel):
    """How the checkpoint that gets evaluated is chosen (Gulrajani & Lopez-Paz's three protocols)."""

    method: str = Field(
        "training_domain",
        description="training_domain: dev split of the source domains; leave_one_domain_out: one source domain "
        "is kept out of training and validates; oracle: an evaluation set validates (target data; labelled oracle)",
    )

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        return registered(SELECTIONS, value)

    domain: str | None = Field(None, description="leave_one_domain_out: the held-out domain (default: the last, sorted)")
    eval_set: str | None = Field(None, description="oracle: the evaluation set that validates (default: the first)")


class TrainConfig(StrictModel):
    """Optimisation and evaluation schedule, owned by the Trainer."""

    steps: int = Field(1000, ge=1, description="number of optimizer steps")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    schedule: str = Field("constant", description="learning-rate schedule after warm-up (constant, cosine)")
    batch_per_domain: int = Field(8, ge=2, description="utterances per source domain per step")
    class_weights: dict[str, float] | None = Field(
        None, description="cross-entropy weight per class name, e.g. {bonafide: 0.9, spoof: 0.1}"
    )
    grad_clip: float | None = Field(1.0, gt=0, description="max global grad norm; null disables clipping")
    max_bad_steps: int = Field(
        10, ge=1, description="steps with NaN/Inf loss or gradients are skipped; stop after this many in a row"
    )
    eval_every: int = Field(100, ge=1, description="evaluate on the dev split every N steps")
    patience: int | None = Field(
        None, ge=1, description="stop after N evaluations without dev improvement; null never stops early"
    )
    checkpoint_every: int | None = Field(
        250, ge=1, description="save the full training state (resumable) every N steps; null = only at a signal stop"
    )
    num_workers: int = Field(0, ge=0, description="data-loader worker processes for training audio; 0 = load in-process")
    grad_accum: int = Field(1, ge=1, description="domain-batch draws whose gradients add up to one optimizer step")
    amp: bool = Field(False, description="bfloat16 autocast for training and scoring (mixed precision)")
    eval_batch_size: int = Field(32, ge=1, description="utterances (or chunks) per batch when scoring")
    eval_chunk_samples: int | None = Field(
        None, ge=400, description="score long utterances as overlapping chunks of this many samples, averaged; null = whole"
    )
    eval_chunk_overlap: float = Field(0.5, ge=0, lt=1, description="overlap between evaluation chunks")
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    progress: bool = Field(True, description="show progress bars")
    selection: SelectionConfig = Field(default_factory=SelectionConfig, description="model-selection method")

    @field_validator("schedule")
    @classmethod
    def _known_schedule(cls, value: str) -> str:
        return registered(SCHEDULES, value)


class TrackingConfig(StrictModel):
    """Where MLflow records the run."""

    enabled: bool = Field(True, description="log to MLflow")
    uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI (file, sqlite:///..., http://...)")
    experiment: str = Field("metadg", description="MLflow experiment name")
    artifact_location: str | None = Field(
        None, description="artifact root for a new experiment; default ./mlartifacts beside a sqlite store"
    )
    http_timeout_s: int = Field(
        10, ge=1, description="seconds an MLflow HTTP request may wait for the server (MLflow's default: 120)"
    )
    http_retries: int = Field(
        1, ge=0, le=10,
        description="retries of a failed MLflow HTTP request (MLflow's default: 7 with back-off, minutes on a dead "
        "server); after that the run goes on offline, journaled for `metadg upload`",
    )


@dataclass
class Plugin:
    """One resolved plugin choice: its registered name, class and validated config."""

    name: str
    cls: type
    cfg: BaseModel

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Instantiate the plugin with its config."""
        return self.cls(self.cfg, *args, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        """{'name': ..., **fields} with defaults filled in (what gets saved and logged)."""
        return {"name": self.name, **self.cfg.model_dump(mode="json")}


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

    def to_dict(self) -> dict[str, Any]:
        """The resolved config (defaults filled in); reloading it gives the same Experiment."""
        return {
            "name": self.name,
            "seed": self.seed,
            "output_dir": self.output_dir,
            "task": self.task.as_dict(),
            "model": {"backbone": self.backbone.as_dict(), "head": self.head.as_dict()},
            "adapter": self.adapter.as_dict(),
            "algorithm": self.algorithm.as_dict(),
            "train": self.train.model_dump(mode="json"),
            "tracking": self.tracking.model_dump(mode="json"),
        }


TOP_KEYS = {
    "name": "run name (default: derived from the file name)",
    "seed": "seed for Python, NumPy, torch and the domain splits",
    "output_dir": "folder that receives one sub-folder per run",
    "task": "the DG problem: {name: ..., ...}",
    "model": "{backbone: {name: ...}, head: {name: ...}}",
    "adapter": "which parameters train: {name: lora|full|head_only, ...}",
    "algorithm": "how gradients are formed: {name: erm|mldg, ...}",
    "train": "optimisation schedule",
    "tracking": "MLflow settings",
}


# ---------------------------------------------------------------- loading YAML


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse one YAML mapping with the safe loader; errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_yaml(text: str, source: str) -> Any:
    """yaml.safe_load, refusing duplicate keys and anchors/aliases that expand past MAX_YAML_NODES.

    Aliases share one object, so a small "billion laughs" file loads cheaply, but every later walk
    (includes, ${var} expansion, validation, logging) would expand it; it is refused up front.
    """
    loader = yaml.SafeLoader(text)  # what yaml.safe_load uses, split to check the node graph before building
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source, {}, set())
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: invalid YAML: nested too deeply") from None
    finally:
        loader.dispose()


def _check_nodes(node: yaml.Node, source: str, sizes: dict[int, int], open_nodes: set[int]) -> int:
    # Returns the node count once aliases are expanded; `sizes` memoises shared nodes, so this is linear.
    if id(node) in sizes:
        return sizes[id(node)]
    where = f"{source}:{node.start_mark.line + 1}"
    if id(node) in open_nodes:
        raise ConfigError(f"{where}: an alias refers to a node that contains it (recursive YAML)")
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            children += [key, value]
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = first.setdefault((key.tag, key.value), key.start_mark.line + 1)
                if line != key.start_mark.line + 1:
                    at = f"{source}:{key.start_mark.line + 1}"
                    raise ConfigError(f"{at}: duplicate key {key.value!r} (first on line {line})")
    total = 1
    for child in children:
        total += _check_nodes(child, source, sizes, open_nodes)
        if total > MAX_YAML_NODES:
            raise ConfigError(
                f"{where}: anchors and aliases here expand to more than {MAX_YAML_NODES:,} values (an alias bomb?)"
            )
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Merge `top` into a copy of `base`: mappings merge recursively, anything else replaces.

    A plugin section whose `name` changes is replaced whole: another plugin's
    hyperparameters (LoRA's `r` under `full`) must not leak into it.
    """
    out = copy.deepcopy(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_raw(
    path: str | Path, _stack: tuple[Path, ...] = (), _cache: dict[Path, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Read a YAML file and deep-merge its `include:` files first, in order."""
    path = Path(path).resolve()
    if path in _stack:
        chain = " → ".join(str(p) for p in (*_stack, path))
        raise ConfigError(f"{path}: include cycle: {chain}")
    # Each file is read once per load: files that include the same file many times over
    # (a "billion laughs" made of includes) cost one read each, not one per path.
    cache = {} if _cache is None else _cache
    if path in cache:
        return cache[path]
    try:
        data = read_yaml(path)
    except ConfigError as exc:
        if not _stack:
            raise
        raise ConfigError(f"{exc} (included from {_stack[-1]})") from None
    includes = data.pop("include", []) or []
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"{path}: include: must be a file name or a list of file names")
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = deep_merge(merged, load_raw(path.parent / inc, (*_stack, path), cache))
    cache[path] = merged = deep_merge(merged, data)
    return merged


def parse_override(text: str) -> tuple[list[str], Any]:
    """'algorithm.beta=2.0' → (['algorithm', 'beta'], 2.0); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, _, value = text.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key segment")
    try:
        parsed = parse_yaml(value, "value") if value.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"override {text!r}: {exc}") from None
    return parts, parsed


def set_dotted(data: dict[str, Any], parts: list[str], value: Any) -> None:
    """Set a nested key, creating mappings on the way; integer segments index lists."""
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_list_index(node, part, where)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {'.'.join(parts)}: {where!r} is not a mapping")
        node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, ".".join(parts))] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(parts)}: parent is not a mapping")


def _list_index(node: list[Any], part: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {where}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Return a copy of `data` with each 'dotted.key=value' applied in order."""
    out = copy.deepcopy(data)
    for text in overrides or []:
        parts, value = parse_override(text)
        set_dotted(out, parts, value)
    return out


def expand_vars(data: dict[str, Any]) -> dict[str, Any]:
    """Replace `${name}` in strings by `vars.name`, else the environment variable; `vars` is removed."""
    data = dict(data)
    variables = data.pop("vars", None) or {}
    if not isinstance(variables, dict):
        raise ConfigError("vars: must be a mapping of name → value")
    variables = dict(variables)
    budget = MAX_EXPANDED_CHARS

    def spend(text: str, where: str) -> str:
        # Variables that repeat each other grow exponentially; stop before memory does.
        nonlocal budget
        budget -= len(text)
        if budget < 0:
            raise ConfigError(
                f"{where}: ${{...}} expansion exceeds {MAX_EXPANDED_CHARS:,} characters (variables that repeat each other?)"
            )
        return text

    for _ in range(len(variables) + 1):  # vars may use other vars; a cycle never settles
        pending = {k: v for k, v in variables.items() if isinstance(v, str) and _VAR.search(v)}
        if not pending:
            break
        for key in pending:
            variables[key] = _VAR.sub(
                lambda m: spend(str(variables.get(m.group(1), os.environ.get(m.group(1), m.group(0)))), f"vars.{key}"),
                variables[key],
            )
    else:
        raise ConfigError(f"vars: {sorted(pending)} refer to each other in a cycle or to undefined names")

    def sub(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, f"{where}.{i}") for i, v in enumerate(value)]
        if not isinstance(value, str) or "${" not in value:
            return value

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in variables:
                return spend(str(variables[name]), where)
            if name in os.environ:
                return spend(os.environ[name], where)
            known = ", ".join(sorted(variables)) or "none"
            raise ConfigError(f"{where}: ${{{name}}} is neither in vars: ({known}) nor an environment variable")

        return _VAR.sub(lookup, value)

    return sub(data, "")


# ---------------------------------------------------------------- validation


def validate_plugin(registry: Registry[Any], raw: Any, where: str) -> Plugin:
    """Validate a `{name: ..., **fields}` section against the named plugin's Config."""
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'name' key, got {type(raw).__name__}")
    fields = dict(raw)
    name = fields.pop("name", None)
    if name is None:
        raise ConfigError(f"{where}.name: missing (valid: {', '.join(registry.names())})")
    if not isinstance(name, str):
        valid = ", ".join(registry.names())
        raise ConfigError(f"{where}.name: must be a plugin name, got {type(name).__name__} (valid: {valid})")
    if name not in registry:
        raise ConfigError(f"{where}.name: {unknown_name_message(registry.kind, name, registry.names())}")
    cls = registry.get(name)
    config_cls = getattr(cls, "Config", None) or StrictModel
    try:
        cfg = config_cls.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, where, config_cls)) from None
    return Plugin(name=name, cls=cls, cfg=cfg)


def format_validation_error(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One line per problem: 'algorithm.betta: unknown key; did you mean beta? (valid: ...)'."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join([where, *loc]) if where else ".".join(loc)
        inner = (err.get("ctx") or {}).get("error")
        if isinstance(inner, ConfigError):
            # A nested plugin (e.g. a corpus) already named its own relative path.
            prefix = ".".join([where, *loc[:-1]]) if where else ".".join(loc[:-1])
            lines += [f"{prefix}.{line}" if prefix else line for line in str(inner).splitlines()]
        elif err["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            lines.append(f"{path}: unknown key{hint} (valid: {', '.join(valid)})")
        else:
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"{path}: {err['msg']}{shown}")
    return "\n".join(lines)


def _fields_at(model: Any, loc: list[str]) -> list[str]:
    for part in loc:
        info = getattr(model, "model_fields", {}).get(part)
        if info is None:
            return []
        model = info.annotation
    return sorted(getattr(model, "model_fields", {}))


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
    extra = [k for k in model if k not in ("backbone", "head")]
    if extra:
        raise ConfigError(f"model.{extra[0]}: unknown key (valid: backbone, head)")
    data = _moved_keys(data)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed: must be an integer from 0 to 2**63 - 1 (got {seed!r})")
    name = data.get("name") or default_name
    output_dir = data.get("output_dir", "runs")
    if not isinstance(name, str) or not isinstance(output_dir, str):
        raise ConfigError("name and output_dir must be strings")
    # The run folder is output_dir/name: a name may nest folders (benchmarks do) but not leave output_dir.
    if Path(name).is_absolute() or ".." in Path(name).parts or "\x00" in name:
        raise ConfigError(f"name: {name!r} must be a relative folder name inside output_dir (no '..', not absolute)")
    return Experiment(
        seed=seed,
        name=name,
        output_dir=output_dir,
        task=validate_plugin(TASKS, data["task"], "task"),
        backbone=validate_plugin(MODELS, model.get("backbone", {"name": "ssl"}), "model.backbone"),
        head=validate_plugin(HEADS, model.get("head", {"name": "linear"}), "model.head"),
        adapter=validate_plugin(ADAPTERS, data["adapter"], "adapter"),
        algorithm=validate_plugin(ALGORITHMS, data["algorithm"], "algorithm"),
        train=_validate_section(TrainConfig, data.get("train"), "train"),
        tracking=_validate_section(TrackingConfig, data.get("tracking"), "tracking"),
        source=source,
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


def dump_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as readable YAML (key order kept)."""
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")

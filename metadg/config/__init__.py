"""Experiment configuration: YAML → includes → overrides → validated, typed config."""

from __future__ import annotations

# The registries are part of this namespace (as when the config was one module): experiment.py reads
# them from here at call time, so `metadg.config.ALGORITHMS` is the name to replace in tests.
from metadg.registry import (ADAPTERS, ALGORITHMS, HEADS, LOSSES, MODELS, SCHEDULES, SELECTIONS, TASKS, Registry,
                             unknown_name_message)
from metadg.config.schema import ConfigError, SelectionConfig, StrictModel, TrackingConfig, TrainConfig, registered
from metadg.config.files import atomic_write_text
from metadg.config.names import nested_name, plain_name
from metadg.config.yaml_io import MAX_YAML_NODES, _check_nodes, dump_yaml, parse_yaml, read_yaml
from metadg.config.compose import (
    MAX_EXPANDED_CHARS,
    apply_overrides,
    deep_merge,
    expand_vars,
    load_raw,
    parse_override,
    set_dotted,
)
from metadg.config.plugins import Plugin, format_validation_error, validate_plugin
from metadg.config.experiment import (
    BENCH_KEYS,
    TOP_KEYS,
    Experiment,
    _validate_section,
    build_experiment,
    load_config,
)

__all__ = [
    "atomic_write_text", "ADAPTERS", "ALGORITHMS", "BENCH_KEYS", "HEADS", "LOSSES", "MAX_EXPANDED_CHARS", "MAX_YAML_NODES", "MODELS", "SCHEDULES",
    "SELECTIONS", "TASKS", "TOP_KEYS", "ConfigError", "Experiment", "Plugin", "Registry", "SelectionConfig",
    "StrictModel", "TrackingConfig", "TrainConfig", "apply_overrides", "build_experiment", "deep_merge", "dump_yaml",
    "expand_vars", "format_validation_error", "load_config", "load_raw", "nested_name", "parse_override", "parse_yaml",
    "plain_name", "read_yaml",
    "registered", "set_dotted", "unknown_name_message", "validate_plugin",
]

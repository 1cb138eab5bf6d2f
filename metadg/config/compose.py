"""Config composition: `include:` deep-merges, `-o dotted.key=value` overrides and `${name}` variables."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from metadg.config.schema import ConfigError
from metadg.config.yaml_io import parse_yaml

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: characters that ${var} expansion may produce in one config
MAX_EXPANDED_CHARS = 1_000_000


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


def _package() -> Any:
    # read_yaml is looked up on the package at call time: `metadg.config.read_yaml` stays the one
    # name to replace, as when the config was one module (a test counts the reads through it).
    import metadg.config

    return metadg.config


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
        data = _package().read_yaml(path)
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

"""Plugin sections: a resolved `{name: ..., **fields}` choice, its validation and readable pydantic errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from metadg.config.schema import ConfigError, StrictModel
from metadg.registry import Registry, unknown_name_message


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

"""Named plugin registries with did-you-mean lookup and entry-point discovery."""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class RegistryError(KeyError):
    """Unknown or duplicate plugin name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """A name → plugin class map that refuses duplicates and discovers entry points."""

    def __init__(self, kind: str, entry_point_group: str, builtins: str | None = None) -> None:
        self.kind = kind
        self.group = entry_point_group
        self.builtins = builtins
        self._items: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that adds the plugin under `name`."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        """Add `obj` under `name`; a second plugin with the same name is an error."""
        if not name or not isinstance(name, str):
            raise RegistryError(f"{self.kind} plugin name must be a non-empty string, got {name!r}")
        if name in self._items and self._items[name] is not obj:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered by "
                f"{_where(self._items[name])}; refusing {_where(obj)}"
            )
        self._items[name] = obj
        if isinstance(obj, type) and "registered_name" not in vars(obj):
            obj.registered_name = name  # lets a plugin name itself in messages

    def get(self, name: str) -> T:
        """Return the plugin registered as `name`, or raise naming the valid choices."""
        self._discover()
        if name in self._items:
            return self._items[name]
        raise RegistryError(unknown_name_message(self.kind, name, self.names()))

    def names(self) -> list[str]:
        """Sorted names of every plugin, built-in and discovered."""
        self._discover()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, plugin) pairs in name order."""
        for name in self.names():
            yield name, self._items[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._items

    def _discover(self) -> None:
        # Entry points load lazily so importing metadg stays cheap and a broken
        # third-party plugin only hurts when its registry is used.
        if self._discovered:
            return
        self._discovered = True
        if self.builtins:
            importlib.import_module(self.builtins)
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._items:
                # Silent only when the entry point names the very object already registered.
                if f"{ep.module}.{ep.attr}" != _where(self._items[ep.name]):
                    log.warning("%s plugin %r from %s is ignored: the name is taken by %s", self.kind, ep.name, ep.value,
                                _where(self._items[ep.name]))
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                log.warning("could not load %s plugin %r from %s: %s", self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._items:  # loading may have registered it already
                self.add(ep.name, obj)


def unknown_name_message(kind: str, name: Any, choices: list[str]) -> str:
    """'unknown algorithm 'mdlg'; did you mean 'mldg'? valid: erm, mldg'."""
    msg = f"unknown {kind} {name!r}"
    close = difflib.get_close_matches(str(name), choices, n=1)
    if close:
        msg += f"; did you mean {close[0]!r}?"
    return msg + f" (valid: {', '.join(choices) or 'none registered'})"


def _where(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def describe(obj: object) -> str:
    """First line of a plugin's docstring."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


# Built-in plugins are imported on first lookup, so `import metadg` stays light.
ALGORITHMS: Registry[Any] = Registry("algorithm", "metadg.algorithms", "metadg.algorithms")
ADAPTERS: Registry[Any] = Registry("adapter", "metadg.adapters", "metadg.adapters")
TASKS: Registry[Any] = Registry("task", "metadg.tasks", "metadg.tasks")
MODELS: Registry[Any] = Registry("backbone", "metadg.models", "metadg.models")
# Heads are the second half of a model; a separate registry keeps `ssl` and
# `linear` from sharing one namespace (see DESIGN §1, models = backbone + head).
HEADS: Registry[Any] = Registry("head", "metadg.heads", "metadg.models")
LOSSES: Registry[Any] = Registry("loss", "metadg.losses", "metadg.losses")
# Choices made by name inside the engine and the search use the same Registry.
SELECTIONS: Registry[Any] = Registry("selection method", "metadg.selection_methods", "metadg.engine.selection")
SCHEDULES: Registry[Any] = Registry("schedule", "metadg.schedules", "metadg.engine.schedules")
SAMPLERS: Registry[Any] = Registry("sampler", "metadg.samplers", "metadg.search.space")
PRUNERS: Registry[Any] = Registry("pruner", "metadg.pruners", "metadg.search.space")

"""Corpus base and the corpus registry shared by every audio task."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from metadg.config import ConfigError, StrictModel
from metadg.engine.utterances import Utterances
from metadg.registry import Registry, unknown_name_message

CORPORA: Registry[type] = Registry("corpus", "metadg.corpora", "metadg.tasks")

#: label text (or an int label a reader already decided) → class index; raises CorpusError for unknown labels
LabelMap = Callable[[str | int], int]


class CorpusConfig(StrictModel):
    """Fields every corpus accepts."""

    filters: dict[str, list[str]] = Field(
        default_factory=dict,
        description="keep utterances whose attribute is in the list, e.g. {attack: [A01, A02]} or {device: [a, b]}; "
        "rows whose attribute is '-' (bona fide in the spoof corpora) are always kept",
    )


class Corpus:
    """Base of corpus readers: `utterances(label_map)` returns the labelled list.

    The task that reads a corpus supplies the label map (the spoof task's folds
    'bona-fide', 'real', ... to 1); readers of one task's corpora may set a default.
    """

    Config: type[CorpusConfig] = CorpusConfig
    #: the label map used when the caller gives none; None = the caller must give one
    default_label_map: LabelMap | None = None

    def __init__(self, cfg: CorpusConfig) -> None:
        self.cfg = cfg
        self.label_map: LabelMap | None = type(self).default_label_map

    def read(self) -> Utterances:
        """The corpus' utterances before filters (labels through `self.label_map`)."""
        raise NotImplementedError

    def class_names(self) -> list[str] | None:
        """The label strings this corpus holds, when it can tell without reading audio; None = unknown."""
        return None

    def map_label(self, label: str | int) -> int:
        """One label through the label map; an int passes unchanged when there is no map."""
        if self.label_map is not None:
            return self.label_map(label)
        if isinstance(label, int):
            return label
        raise ConfigError(f"{getattr(type(self), 'registered_name', type(self).__name__)}: no label map to turn "
                          f"label {label!r} into a class (the task reading this corpus supplies one)")

    def utterances(self, label_map: LabelMap | None = None) -> Utterances:
        """The corpus' utterances with `filters` applied; `label_map` turns label text into class indices."""
        if label_map is not None:
            self.label_map = label_map
        utts = self.read()
        keep = np.ones(len(utts), dtype=bool)
        for key, allowed in self.cfg.filters.items():
            if key not in utts.attrs:
                raise ConfigError(f"filters.{key}: {unknown_name_message('attribute', key, sorted(utts.attrs))}")
            values = utts.attr(key)
            allowed_set = set(map(str, allowed))
            # A typo (`attack: [Codec]`) would silently select nothing of that value: refuse it now,
            # before any training, listing the values the corpus has.
            present = set(values) - {"-"}
            for value in sorted(allowed_set - present):
                raise ConfigError(f"filters.{key}: {unknown_name_message(f'{key} value', value, sorted(present))}")
            keep &= np.array([v in allowed_set or v == "-" for v in values], dtype=bool)
        utts.on_error = getattr(self.cfg, "on_error", "raise")
        return utts if keep.all() else utts.subset(np.flatnonzero(keep))


def default_cache_dir() -> Path:
    """$METADG_CACHE, else ~/.cache/metadg."""
    return Path(os.environ.get("METADG_CACHE") or Path.home() / ".cache" / "metadg")


def corpus_spec(value: Any, where: str) -> dict[str, Any]:
    """A task config's corpus section validated against its reader (errors name `where`), with defaults filled."""
    from metadg.config import validate_plugin

    # ConfigError is a ValueError: pydantic wraps it and the formatter keeps its path.
    return validate_plugin(CORPORA, value, where).as_dict()


def read_corpus(spec: dict[str, Any], where: str, label_map: LabelMap | None) -> Utterances:
    """Build the reader of a validated corpus spec and read its utterances through `label_map`."""
    from metadg.config import validate_plugin

    plugin = validate_plugin(CORPORA, spec, where)
    try:
        return plugin.build().utterances(label_map)
    except ConfigError as exc:  # e.g. a filter on an attribute the corpus lacks
        raise ConfigError(f"{where}.{exc}") from None


def corpus_classes(spec: dict[str, Any], where: str) -> list[str] | None:
    """The label strings the spec's corpus holds, if its reader can tell without reading audio."""
    from metadg.config import validate_plugin

    return validate_plugin(CORPORA, spec, where).build().class_names()

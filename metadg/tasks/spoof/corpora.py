"""Corpus readers of the spoof task, each registered by name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from metadg.config import ConfigError, StrictModel
from metadg.registry import Registry, unknown_name_message
from metadg.tasks.base import Utterances

CORPORA: Registry[type] = Registry("corpus", "metadg.corpora")


class CorpusConfig(StrictModel):
    """Fields every corpus accepts."""

    filters: dict[str, list[str]] = Field(
        default_factory=dict,
        description="keep utterances whose attribute is in the list, e.g. {attack: [A01, A02]}; "
        "bona fide rows whose attribute is '-' are always kept",
    )


class Corpus:
    """Base of corpus readers: `utterances()` returns the labelled list."""

    Config: type[CorpusConfig] = CorpusConfig

    def __init__(self, cfg: CorpusConfig) -> None:
        self.cfg = cfg

    def read(self) -> Utterances:
        """The corpus' utterances before filters."""
        raise NotImplementedError

    def utterances(self) -> Utterances:
        """The corpus' utterances with `filters` applied."""
        utts = self.read()
        keep = np.ones(len(utts), dtype=bool)
        for key, allowed in self.cfg.filters.items():
            if key not in utts.attrs:
                raise ConfigError(f"filters.{key}: {unknown_name_message('attribute', key, sorted(utts.attrs))}")
            values = utts.attr(key)
            allowed_set = set(map(str, allowed))
            keep &= np.array([v in allowed_set or v == "-" for v in values], dtype=bool)
        utts.on_error = getattr(self.cfg, "on_error", "raise")
        return utts if keep.all() else utts.subset(np.flatnonzero(keep))


def default_cache_dir() -> Path:
    """$METADG_CACHE, else ~/.cache/metadg."""
    return Path(os.environ.get("METADG_CACHE") or Path.home() / ".cache" / "metadg")


class SyntheticConfig(CorpusConfig):
    """The built-in synthetic corpus: speech-like bona fide vs several synthesis attacks."""

    split: Literal["train", "dev", "eval"] = Field("train", description="train/dev: seen attacks; eval: all")
    seed: int = Field(0, ge=0, description="corpus seed (independent of the experiment seed)")
    n_bonafide: int | None = Field(None, ge=1, description="bona fide utterances; default 400/200/400 per split")
    n_per_attack: int | None = Field(None, ge=1, description="spoofs per attack; default 200/100/150 per split")
    duration_s: float = Field(1.0, gt=0.05, le=30, description="utterance length in seconds")
    attacks: list[str] | None = Field(None, description="attacks to generate; default seen (train/dev) or all (eval)")
    cache_dir: str | None = Field(None, description="where generated splits are cached; default $METADG_CACHE")

    @field_validator("attacks")
    @classmethod
    def _known_attacks(cls, value: list[str] | None) -> list[str] | None:
        from metadg.tasks.spoof.synthetic import ALL_ATTACKS

        # Checked with the config, not after the other corpora have been indexed.
        unknown = [a for a in value or [] if a not in ALL_ATTACKS]
        if unknown:
            raise ValueError(unknown_name_message("attack", unknown[0], list(ALL_ATTACKS)))
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"duplicate attacks in {value}")
        return value


_SYNTHETIC_SIZES = {"train": (400, 200), "dev": (200, 100), "eval": (400, 150)}


@CORPORA.register("synthetic")
class SyntheticCorpus(Corpus):
    """Deterministic synthetic spoofing corpus generated on first use and cached."""

    Config = SyntheticConfig

    def read(self) -> Utterances:
        """Generate (or read from cache) the configured split."""
        from metadg.tasks.spoof import synthetic

        cfg = self.cfg
        n_bona, n_att = _SYNTHETIC_SIZES[cfg.split]
        split = synthetic.load_split(
            cfg.split,
            cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "synthetic",
            seed=cfg.seed,
            n_bonafide=cfg.n_bonafide or n_bona,
            n_per_attack=cfg.n_per_attack or n_att,
            duration_s=cfg.duration_s,
            attacks=cfg.attacks,
        )
        waves = split.waves
        return Utterances(
            split.ids,
            split.labels,
            {"attack": split.attacks, "speaker": split.speakers, "corpus": ["synthetic"] * len(split.ids)},
            _ArrayLoader(waves),
            name=f"synthetic/{cfg.split}",
        )


class _ArrayLoader:
    # Picklable row accessor over an in-memory (N, T) array.
    def __init__(self, waves: np.ndarray) -> None:
        self.waves = waves

    def __call__(self, index: int) -> np.ndarray:
        return self.waves[index]

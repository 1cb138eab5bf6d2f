"""`synthetic`: the built-in synthetic spoofing corpus as a registered corpus reader."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from metadg.engine.utterances import ArrayLoader, Utterances
from metadg.registry import unknown_name_message
from metadg.tasks.audio.corpus import CORPORA, Corpus, CorpusConfig, default_cache_dir  # noqa: F401  old home of these names

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
            ArrayLoader(waves),
            name=f"synthetic/{cfg.split}",
        )


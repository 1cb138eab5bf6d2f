"""`synthetic_scenes`: the built-in synthetic acoustic-scenes corpus as a registered corpus reader."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from metadg.engine.utterances import ArrayLoader, Utterances
from metadg.registry import unknown_name_message
from metadg.tasks.audio.corpus import CORPORA, Corpus, CorpusConfig, default_cache_dir
from metadg.tasks.classification import synthetic_scenes as scenes

#: clips per class and device of each split when not configured
_SIZES = {"train": 6, "dev": 3, "eval": 4}


class SyntheticScenesConfig(CorpusConfig):
    """Scene textures recorded through seen devices (train/dev) and seen + unseen ones (eval)."""

    split: Literal["train", "dev", "eval"] = Field("train", description="train/dev: seen devices; eval: all")
    seed: int = Field(0, ge=0, description="corpus seed (independent of the experiment seed)")
    n_per_class: int | None = Field(None, ge=1, description="clips per class and device; default 6/3/4 per split")
    duration_s: float = Field(1.0, gt=0.05, le=30, description="clip length in seconds")
    devices: list[str] | None = Field(None, description="devices to record with; default seen (train/dev) or all (eval)")
    cache_dir: str | None = Field(None, description="where generated splits are cached; default $METADG_CACHE")

    @field_validator("devices")
    @classmethod
    def _known_devices(cls, value: list[str] | None) -> list[str] | None:
        unknown = [d for d in value or [] if d not in scenes.ALL_DEVICES]
        if unknown:
            raise ValueError(unknown_name_message("device", unknown[0], list(scenes.ALL_DEVICES)))
        if value is not None and len(set(value)) != len(value):
            raise ValueError(f"duplicate devices in {value}")
        return value


@CORPORA.register("synthetic_scenes")
class SyntheticScenesCorpus(Corpus):
    """Deterministic synthetic scenes × devices corpus, generated on first use and cached."""

    Config = SyntheticScenesConfig

    def class_names(self) -> list[str]:
        """The generator's scene classes, in its label order."""
        return list(scenes.CLASSES)

    def read(self) -> Utterances:
        """Generate (or read from cache) the configured split; labels through the task's map."""
        cfg = self.cfg
        split = scenes.load_split(
            cfg.split,
            cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir() / "synthetic_scenes",
            seed=cfg.seed,
            n_per_class=cfg.n_per_class or _SIZES[cfg.split],
            duration_s=cfg.duration_s,
            devices=cfg.devices,
        )
        labels = [self.map_label(name) for name in split.scenes]
        attrs = {"scene": split.scenes, "device": split.devices, "location": split.locations,
                 "corpus": ["synthetic_scenes"] * len(split.ids)}
        return Utterances(split.ids, labels, attrs, ArrayLoader(split.waves), name=f"synthetic_scenes/{cfg.split}")


"""`fake_or_real`: FakeOrReal (Reimao & Tzerpos 2019), one version and split, scanned from its folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpusConfig, Row
from metadg.tasks.spoof.open_corpora import BONAFIDE, OpenCorpus, Parts, audio_files, locate

# Released archives unpack for-2sec and for-rerec under longer names (for-2sec/for-2seconds/...).
_FOR_NAMES = {
    "for-original": ["for-original"],
    "for-norm": ["for-norm"],
    "for-2sec": ["for-2sec", "for-2seconds"],
    "for-rerec": ["for-rerec", "for-rerecorded"],
}


class FakeOrRealConfig(FileCorpusConfig):
    """FakeOrReal (Reimao & Tzerpos 2019): one version and one split."""

    root: str = Field(description="folder containing the version folders (for-norm/, ...), or a version folder")
    version: Literal["for-original", "for-norm", "for-2sec", "for-rerec"] = Field(
        ..., description="FoR version; for-original mixes .wav and .mp3 at varying sample rates"
    )
    split: Literal["training", "validation", "testing"] = Field(..., description="FoR split folder")


@CORPORA.register("fake_or_real")
class FakeOrRealCorpus(OpenCorpus):
    """FakeOrReal: the label is the folder name (real/fake); ids are '<version>/<split>/<label>/<file name>'."""

    Config = FakeOrRealConfig
    layout = "<version>/<split>/{real,fake}/*.{wav,mp3} (mirrors may nest: for-norm/for-norm/training/...)"

    def parts(self) -> Parts:
        """The version folder that holds the configured split."""
        cfg: FakeOrRealConfig = self.cfg
        self.require(".")
        names = _FOR_NAMES[cfg.version]
        base = locate(self.root, names)
        if not (base / cfg.split).is_dir():
            raise CorpusError(
                f"{self.name}: no {cfg.split}/ folder for {cfg.version} under {self.root} (looked in {base}; "
                f"expected layout: {self.layout})"
            )
        for label in ("real", "fake"):
            if not (base / cfg.split / label).is_dir():
                raise CorpusError(f"{self.name}: {base / cfg.split / label} not found (expected layout: {self.layout})")
        return [(base, lambda: self._rows(base))]

    def _rows(self, base: Path) -> Iterator[Row]:
        """real/ and fake/ of the split, each sorted by file name."""
        cfg: FakeOrRealConfig = self.cfg
        for label in ("fake", "real"):
            folder = base / cfg.split / label
            for path in audio_files(folder, (".wav", ".mp3")):
                # The extension stays in the id: for-original may hold x.wav and x.mp3 side by side.
                utt = f"{cfg.version}/{cfg.split}/{label}/{path.name}"
                attrs = {"version": cfg.version, "split": cfg.split, "attack": BONAFIDE if label == "real" else "fake"}
                yield Row(utt, path.relative_to(base), label, attrs, str(path))

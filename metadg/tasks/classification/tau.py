"""`tau2020_mobile`: TAU Urban Acoustic Scenes 2020 Mobile, development set (DCASE 2020 task 1A).

Layout under the root (TAU-urban-acoustic-scenes-2020-mobile-development/): audio/*.wav,
a tab-separated meta.csv with every file's scene, location and device, and
evaluation_setup/fold{N}_{train,evaluate,test}.csv selecting the files of the official split
(devices s4-s6 never occur in train: they are the unseen devices).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import FileCorpus, FileCorpusConfig, Row

#: the 10 acoustic scenes of the 2020 development set, in the order of the official metadata
SCENES: tuple[str, ...] = (
    "airport", "bus", "metro", "metro_station", "park",
    "public_square", "shopping_mall", "street_pedestrian", "street_traffic", "tram",
)
#: the recording devices: real a, b, c and simulated s1-s6 (s4-s6 unseen in the official train fold)
DEVICES: tuple[str, ...] = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
META_COLUMNS: tuple[str, ...] = ("filename", "scene_label", "identifier", "source_label")

Split = Literal["train", "evaluate", "test", "all"]


class Tau2020MobileConfig(FileCorpusConfig):
    """TAU Urban Acoustic Scenes 2020 Mobile development set, one split of one fold."""

    root: str = Field(description="the TAU-urban-acoustic-scenes-2020-mobile-development folder "
                      "(holds audio/, meta.csv and evaluation_setup/)")
    split: Split = Field("train", description="train, evaluate or test: the files of evaluation_setup/"
                         "fold{fold}_{split}.csv; all: every row of meta.csv")
    fold: int = Field(1, ge=1, description="evaluation_setup fold number (the official release has fold 1)")


@CORPORA.register("tau2020_mobile")
class Tau2020Mobile(FileCorpus):
    """TAU 2020 Mobile: label = scene; attributes scene, device, identifier, city, location, corpus."""

    Config = Tau2020MobileConfig
    layout = (
        "audio/*.wav; meta.csv (tab-separated, header 'filename scene_label identifier source_label'); "
        "evaluation_setup/fold{N}_train.csv and fold{N}_evaluate.csv (tab-separated, header "
        "'filename scene_label') and fold{N}_test.csv (header 'filename')"
    )

    def class_names(self) -> list[str]:
        """The 10 TAU scenes (known without reading meta.csv)."""
        return list(SCENES)

    def rows(self) -> Iterator[Row]:
        """Rows of the split; labels and attributes always come from meta.csv."""
        cfg: Tau2020MobileConfig = self.cfg
        meta, rejected = self._meta()
        if cfg.split == "all":
            yield from meta.values()
            return
        setup = self.require(Path("evaluation_setup") / f"fold{cfg.fold}_{cfg.split}.csv")
        # test lists file names only; train and evaluate also carry the scene, checked against meta.csv.
        required = ["filename"] if cfg.split == "test" else ["filename", "scene_label"]
        seen: dict[str, str] = {}
        for where, rec in self.table(setup, required, "\t"):
            name = rec["filename"]
            if name in seen:
                self.fail("duplicate file", f"{where}: {name} already listed at {seen[name]}")
                continue
            seen[name] = where
            row = meta.get(name)
            if row is None:
                if name not in rejected:  # a meta row already counted as bad is not counted again
                    self.fail("not in meta.csv", f"{where}: {name} is not listed in {self.root / 'meta.csv'}")
                continue
            scene = rec.get("scene_label")
            if scene is not None and scene != row.label:
                self.fail("scene mismatch", f"{where}: scene_label {scene!r} of {name} disagrees with "
                          f"{row.where} ({row.label!r})")
                continue
            # The setup line is where the base reports a missing audio file or an unknown label.
            yield Row(row.utt_id, row.path, row.label, row.attrs, where)

    def _meta(self) -> tuple[dict[str, Row], set[str]]:
        """meta.csv as file name → Row, and the file names of rows rejected under on_error: skip."""
        path = self.require("meta.csv")
        rows: dict[str, Row] = {}
        rejected: set[str] = set()
        for where, rec in self.table(path, META_COLUMNS, "\t"):
            name, scene, identifier, device = (rec[c] for c in META_COLUMNS)
            if name in rows:
                self.fail("duplicate file", f"{where}: {name} already listed at {rows[name].where}")
                continue
            stem = Path(name).stem
            # The device is also the last token of the file name; a disagreement means a corrupted or
            # hand-edited meta.csv, and device is the domain the whole benchmark is about.
            if stem.rsplit("-", 1)[-1] != device:
                self.fail("device mismatch", f"{where}: source_label {device!r} is not the device of {name} "
                          f"(its last '-' token is {stem.rsplit('-', 1)[-1]!r})")
                rejected.add(name)
                continue
            attrs = {
                "scene": scene,
                "device": device,
                "identifier": identifier,
                "city": identifier.rsplit("-", 1)[0],
                "location": identifier,
            }
            utt = name.removeprefix("audio/").removesuffix(".wav")
            rows[name] = Row(utt, Path(name), scene, attrs, where)
        return rows, rejected

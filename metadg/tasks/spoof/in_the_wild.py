"""`in_the_wild`: In-the-Wild (Müller et al. 2022), read from its meta.csv."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpusConfig, Row
from metadg.tasks.spoof.labels import normalize_label
from metadg.tasks.spoof.open_corpora import BONAFIDE, OpenCorpus, Parts, locate, stem_id


class InTheWildConfig(FileCorpusConfig):
    """In-the-Wild (Müller et al. 2022): celebrity/politician recordings and their deepfakes."""

    root: str = Field(description="folder containing release_in_the_wild/, or release_in_the_wild/ itself")


@CORPORA.register("in_the_wild")
class InTheWildCorpus(OpenCorpus):
    """In-the-Wild: meta.csv `file,speaker,label`; spoofs have no attack labels, so attack is 'spoof'."""

    Config = InTheWildConfig
    layout = "release_in_the_wild/{0..31778}.wav and release_in_the_wild/meta.csv with header file,speaker,label"

    def parts(self) -> Parts:
        """The release folder: audio and meta.csv (also accepted one level up)."""
        self.require(".")
        audio = locate(self.root, ["release_in_the_wild"])
        meta = next((m for m in (audio / "meta.csv", self.root / "meta.csv") if m.is_file()), None)
        if meta is None:
            raise CorpusError(
                f"{self.name}: meta.csv not found in {audio} (expected layout under {self.root}: {self.layout})"
            )
        return [(audio, lambda: self._rows(meta))]

    def _rows(self, meta: Path) -> Iterator[Row]:
        """One Row per meta.csv row; `file` is relative to the release folder."""
        for where, rec in self.table(meta, ["file", "speaker", "label"]):
            name = rec["file"]
            if not name:
                self.fail("malformed line", f"{where}: empty file column")
                continue
            # The release is flat: a name with path parts could leave the folder, or name one
            # file twice under two ids ('x/../0.wav' stays inside the root the base checks).
            if "/" in name or "\\" in name or name in (".", ".."):
                self.fail("path outside root", f"{where}: file name {name!r} is not a plain name in {meta.parent}")
                continue
            # Without per-system labels, 'spoof' lets an attack filter take all spoofs or none of them.
            try:
                attack = BONAFIDE if normalize_label(rec["label"]) == 1 else "spoof"
            except CorpusError:  # the base reports the unknown label with this row's file and line
                attack = "spoof"
            path = Path(name)
            yield Row(stem_id(path), path, rec["label"], {"speaker": rec["speaker"], "attack": attack}, where)

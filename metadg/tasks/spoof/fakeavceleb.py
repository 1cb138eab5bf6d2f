"""`fakeavceleb`: audio tracks of FakeAVCeleb v1.2 (Khalid et al. 2021), labelled by their audio half."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpusConfig, Row
from metadg.tasks.spoof.open_corpora import BONAFIDE, OpenCorpus, Parts, locate, stem_id

log = logging.getLogger(__name__)


_FAVC_CATEGORIES = ("RealVideo-RealAudio", "RealVideo-FakeAudio", "FakeVideo-RealAudio", "FakeVideo-FakeAudio")


class FakeAVCelebConfig(FileCorpusConfig):
    """FakeAVCeleb v1.2 (Khalid et al. 2021), audio tracks extracted next to the videos."""

    root: str = Field(description="folder containing FakeAVCeleb_v1.2/, or FakeAVCeleb_v1.2/ itself")
    audio_ext: str = Field(
        ".wav", pattern=r"^\.[A-Za-z0-9]+$", description="extension of the audio extracted beside each video"
    )


@CORPORA.register("fakeavceleb")
class FakeAVCelebCorpus(OpenCorpus):
    """FakeAVCeleb: label from the audio half of the category (*-RealAudio bona fide, *-FakeAudio spoof)."""

    Config = FakeAVCelebConfig
    layout = (
        "FakeAVCeleb_v1.2/meta_data.csv and FakeAVCeleb_v1.2/<category>/<race>/<gender>/<id>/<video>.mp4 with the "
        "audio extracted beside each video as <video><audio_ext>; categories: " + ", ".join(_FAVC_CATEGORIES)
    )

    def parts(self) -> Parts:
        """The release folder with meta_data.csv."""
        self.require(".")
        base = locate(self.root, ["FakeAVCeleb_v1.2", "FakeAVCeleb"])
        if not (base / "meta_data.csv").is_file():
            raise CorpusError(
                f"{self.name}: {base / 'meta_data.csv'} not found (expected layout under {self.root}: {self.layout})"
            )
        return [(base, lambda: self._rows(base / "meta_data.csv"))]

    def _rows(self, meta: Path) -> Iterator[Row]:
        """One Row per video listed in meta_data.csv, pointing at its extracted audio."""
        cfg: FakeAVCelebConfig = self.cfg
        seen: set[str] = set()
        duplicates = 0
        # The released header ends in a comma: its `path` column holds the file name and the
        # unnamed last column the folder ('FakeAVCeleb/RealVideo-RealAudio/African/men/id00076').
        for where, rec in self.table(meta, ["path"], fix_header=lambda h: h[:-1] + ["dir"] if h and h[-1] == "" else h):
            if not rec["path"]:
                self.fail("malformed line", f"{where}: empty path (file name) column")
                continue
            given = PurePosixPath("/".join(v for v in (rec.get("dir"), rec["path"]) if v).replace("\\", "/"))
            if ".." in given.parts:  # could leave the release folder, or list one file under two ids
                self.fail("path outside root", f"{where}: {given} has a '..' part")
                continue
            # Drop the leading dataset folder, whatever the mirror called it.
            start = next((i for i, p in enumerate(given.parts) if p in _FAVC_CATEGORIES), None)
            if start is not None and len(given.parts) > start + 1:
                video = Path(*given.parts[start:])
            elif all(rec.get(k) for k in ("type", "race", "gender", "source")) and rec["type"] in _FAVC_CATEGORIES:
                video = Path(rec["type"], rec["race"], rec["gender"], rec["source"], given.name)
            else:
                self.fail("malformed line", f"{where}: no {'/'.join(_FAVC_CATEGORIES)} folder in this row's path")
                continue
            utt = stem_id(video)
            if utt in seen:  # the release lists some videos twice under different methods: first row wins
                duplicates += 1
                continue
            seen.add(utt)
            folder = video.parent.parts
            category = folder[0]
            fake_audio = category.endswith("FakeAudio")
            method = rec.get("method") or category
            attrs = {
                "category": category,
                "race": rec.get("race") or (folder[1] if len(folder) > 1 else ""),
                "gender": rec.get("gender") or (folder[2] if len(folder) > 2 else ""),
                "speaker": rec.get("source") or (folder[3] if len(folder) > 3 else ""),
                "method": method,
                "attack": method if fake_audio else BONAFIDE,
            }
            yield Row(utt, video.with_suffix(cfg.audio_ext), 0 if fake_audio else 1, attrs, where)
        if duplicates:
            log.info("%s: %s lists %d videos more than once; kept the first row of each", self.name, meta, duplicates)

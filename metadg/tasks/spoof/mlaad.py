"""`mlaad`: MLAAD (Müller et al. 2024) spoofs with optional M-AILABS bona fide."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from pydantic import Field

from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError, FileCorpusConfig, Row
from metadg.tasks.spoof.open_corpora import BONAFIDE, OpenCorpus, Parts, audio_files, locate, stem_id

log = logging.getLogger(__name__)


_MLAAD_COLUMNS = ("path", "original_file", "language", "is_original_language", "duration", "training_data",
                  "model_name", "architecture", "transcript")


class MLAADConfig(FileCorpusConfig):
    """MLAAD (Müller et al. 2024) spoofs, optionally with M-AILABS bona fide."""

    root: str = Field(description="MLAAD folder containing fake/ (or fake/ itself)")
    mailabs_root: str | None = Field(
        None, description="M-AILABS folder containing <lang>/by_book/... for bona fide; default: spoofs only"
    )
    languages: list[str] | None = Field(
        None,
        min_length=1,
        description="MLAAD language folders to read (e.g. [en, de]); M-AILABS de_DE counts as de; default: all",
    )


def _mailabs_code(folder: str) -> str:
    """M-AILABS 'de_DE', 'en_UK' → MLAAD-style 'de', 'en'."""
    return folder.split("_")[0].lower()


@CORPORA.register("mlaad")
class MLAADCorpus(OpenCorpus):
    """MLAAD: one spoof per meta.csv row; bona fide from M-AILABS when `mailabs_root` is set."""

    Config = MLAADConfig
    layout = (
        "fake/<lang>/<model_dir>/*.wav with a '|'-separated meta.csv per model folder "
        "(header " + "|".join(_MLAAD_COLUMNS) + "); M-AILABS: <lang>/by_book/<gender>/<reader>/<book>/wavs/*.wav"
    )

    def _wanted(self, folder: str) -> bool:
        """Whether an M-AILABS language folder (de_DE) matches `languages` (de or de_DE)."""
        langs = self.cfg.languages
        return langs is None or folder in langs or _mailabs_code(folder) in langs

    def parts(self) -> Parts:
        """MLAAD's fake/ folder, then the M-AILABS root if configured."""
        cfg: MLAADConfig = self.cfg
        self.require(".")
        fake = locate(self.root, ["fake"])
        have = sorted(d.name for d in fake.iterdir() if d.is_dir())
        langs = [d for d in have if cfg.languages is None or d in cfg.languages]
        missing = sorted(set(cfg.languages or []) - set(have))
        if missing or not langs:
            raise CorpusError(
                f"{self.name}: language folder(s) {', '.join(missing) or '(none)'} not found in {fake} "
                f"(have: {', '.join(have) or 'nothing'}; expected layout under {self.root}: {self.layout})"
            )
        parts = [(fake, lambda: self._spoofs(fake, langs))]
        if cfg.mailabs_root is not None:
            mailabs = Path(cfg.mailabs_root).expanduser()
            if not mailabs.is_dir():
                raise CorpusError(
                    f"{self.name}: M-AILABS root {mailabs} does not exist (expected layout: {self.layout})"
                )
            found = sorted(d.name for d in mailabs.iterdir() if (d / "by_book").is_dir() and self._wanted(d.name))
            if not found:
                wanted = ", ".join(cfg.languages or ["any language"])
                raise CorpusError(f"{self.name}: no <lang>/by_book/ folder for {wanted} in {mailabs} ({self.layout})")
            absent = sorted(set(cfg.languages or []) - {_mailabs_code(d) for d in found} - set(found))
            if absent:  # M-AILABS covers fewer languages than MLAAD: say so, but use what there is
                log.warning("%s: M-AILABS has no bona fide for %s", self.name, ", ".join(absent))
            parts.append((mailabs, lambda: self._bonafide(mailabs, found)))
        return parts

    def _spoofs(self, fake: Path, langs: list[str]) -> Iterator[Row]:
        """One spoof Row per meta.csv row of every model folder of the chosen languages."""
        for lang in langs:
            for model_dir in sorted(d for d in (fake / lang).iterdir() if d.is_dir()):
                meta = model_dir / "meta.csv"
                if not meta.is_file():
                    self.fail("missing meta.csv", f"{meta} not found (every model folder has one: {self.layout})")
                    continue
                try:
                    yield from self._model_rows(lang, model_dir, meta)
                except CorpusError as exc:  # a header without the needed columns: the whole file is unusable
                    self.fail("malformed meta.csv", str(exc))

    def _model_rows(self, lang: str, model_dir: Path, meta: Path) -> Iterator[Row]:
        """Spoof Rows of one model folder's meta.csv."""
        for where, rec in self.table(meta, ["path", "model_name", "architecture"], delimiter="|"):
            given = PurePosixPath(rec["path"].replace("\\", "/"))
            if not given.name:
                self.fail("malformed line", f"{where}: empty path column")
                continue
            if ".." in given.parts:
                self.fail("path outside root", f"{where}: {rec['path']} escapes the model folder {model_dir}")
                continue
            # Only the file name counts: some MLAAD rows name the wrong language folder
            # (zh for zh-cn), and every file sits directly in its model folder.
            path = Path(lang, model_dir.name, given.name)
            model = rec["model_name"]
            attrs = {"language": lang, "model": model, "architecture": rec["architecture"], "attack": model,
                     "speaker": ""}
            yield Row(stem_id(path), path, 0, attrs, where)

    def _bonafide(self, mailabs: Path, folders: list[str]) -> Iterator[Row]:
        """One bona fide Row per M-AILABS wav of the chosen language folders."""
        for folder in folders:
            by_book = mailabs / folder / "by_book"
            for wavs in sorted(by_book.glob("**/wavs")):
                # <gender>/<reader>/<book>/wavs; multi-speaker books sit in mix/<book>/wavs without a reader.
                rel = wavs.relative_to(by_book).parts
                speaker = rel[1] if len(rel) == 4 else ""
                for path in audio_files(wavs, (".wav",)):
                    relative = path.relative_to(mailabs)
                    attrs = {"language": _mailabs_code(folder), "model": BONAFIDE, "architecture": BONAFIDE,
                             "attack": BONAFIDE, "speaker": speaker}
                    yield Row("mailabs/" + stem_id(relative), relative, 1, attrs, str(path))

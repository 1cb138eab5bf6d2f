"""Shared parts of the readers of public deepfake corpora other than ASVspoof.

The readers live in `in_the_wild`, `fake_or_real`, `fakeavceleb`, `mlaad` and `wavefake`. Every one gives
every row an `attack` attribute ('-' for bona fide), so `filters: {attack: [...]}` selects spoofing
systems and keeps all bona fide rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from metadg.engine.utterances import Utterances
from metadg.tasks.audio.file_corpus import FileCorpus, FileLoader, Row, SkipReport
from metadg.tasks.spoof.labels import normalize_label

BONAFIDE = "-"  # attack value of bona fide rows: filters always keep it

#: (root, rows) per source folder of a reader, e.g. MLAAD's fake/ and the M-AILABS root
Parts = list[tuple[Path, Callable[[], Iterator[Row]]]]


def locate(root: Path, names: Sequence[str]) -> Path:
    """root/<name>/<name> (mirrors that nest one level deeper), else root/<name>, else root itself."""
    for outer in names:
        for inner in names:
            if (root / outer / inner).is_dir():
                return root / outer / inner
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


def stem_id(relative: Path) -> str:
    """Utterance id: the path relative to the corpus folder, without extension, with '/' separators."""
    return relative.with_suffix("").as_posix()


def audio_files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    """Audio files directly in `folder`, sorted by name so ids and order are deterministic."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and p.is_file())


class OpenCorpus(FileCorpus):
    """Base of these readers: rows drawn from several roots, each indexed under its own."""

    _part_rows: Callable[[], Iterator[Row]] | None = None
    default_label_map = normalize_label

    def parts(self) -> Parts:
        """(root, rows) per source folder; paths of each source must stay inside its own root."""
        raise NotImplementedError

    def rows(self) -> Iterator[Row]:
        """Rows of the source `read` is indexing (of every source when called on its own)."""
        if self._part_rows is not None:
            yield from self._part_rows()
            return
        for _, rows in self.parts():
            yield from rows()

    def read(self) -> Utterances:
        """Index each source under its own root (the base checks paths against one root) and concatenate."""
        configured, total, pieces = self.root, SkipReport(self.name), []
        try:
            for root, rows in self.parts():
                self.root, self._part_rows, self.skips = root, rows, SkipReport(self.name)
                try:
                    pieces.append(super().read())
                finally:
                    total.counts.update(self.skips.counts)
                    for reason, examples in self.skips.examples.items():
                        total.examples[reason] = (total.examples.get(reason, []) + examples)[:3]
        finally:
            self.root, self.skips, self._part_rows = configured, total, None
        return concat(pieces, self.name)


def concat(pieces: list[Utterances], name: str) -> Utterances:
    """One Utterances from several FileLoader-backed pieces; attributes one piece lacks are ''."""
    if len(pieces) == 1:
        return pieces[0]
    keys = list(dict.fromkeys(k for p in pieces for k in p.attrs))
    attrs = {k: [v for p in pieces for v in p.attrs.get(k, [""] * len(p))] for k in keys}
    ids = [i for p in pieces for i in p.ids]
    labels = np.concatenate([p.labels for p in pieces])
    paths = [path for p in pieces for path in p.loader.paths]
    return Utterances(ids, labels, attrs, FileLoader(paths), name=name)

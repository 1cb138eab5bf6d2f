"""Corpora on disk: protocol rows → utterances, labels through the task's map, one bad-input policy for all readers."""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field
from tqdm.auto import tqdm

from metadg.config.files import open_regular
from metadg.engine.utterances import Utterances
from metadg.tasks.audio.corpus import Corpus, CorpusConfig
from metadg.tasks.audio.loading import SAMPLE_RATE, load_audio

log = logging.getLogger(__name__)

#: longest protocol line accepted; real ones are under 200 bytes
MAX_LINE_BYTES = 10_000


class CorpusError(ValueError):
    """Bad corpus input; the message names the file (and protocol line)."""


@dataclass
class Row:
    """One protocol entry before validation."""

    utt_id: str
    path: Path  # relative to the corpus root, or absolute
    label: str | int
    attrs: dict[str, str]
    where: str  # "protocol.txt:12" for error messages


@dataclass
class SkipReport:
    """What a reader skipped under on_error: skip, by reason, with a few examples."""

    corpus: str
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, detail: str) -> None:
        """Count one skipped row."""
        self.counts[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 3:
            self.examples[reason].append(detail)

    @property
    def total(self) -> int:
        """Rows skipped."""
        return sum(self.counts.values())

    def summary(self) -> str:
        """'corpus: skipped 3 (missing file: 2, unknown label: 1); e.g. ...'."""
        parts = ", ".join(f"{r}: {n}" for r, n in sorted(self.counts.items()))
        eg = "; ".join(f"{r}: {ex[0]}" for r, ex in sorted(self.examples.items()))
        return f"{self.corpus}: skipped {self.total} ({parts}); e.g. {eg}"


class FileCorpusConfig(CorpusConfig):
    """Fields of every corpus read from a folder."""

    root: str = Field(description="corpus root folder")
    on_error: Literal["raise", "skip"] = Field(
        "raise", description="bad rows/files: stop with an error naming file and line, or skip and count them"
    )
    check_files: bool = Field(True, description="stat every listed audio file while indexing (no audio is opened)")


class FileCorpus(Corpus):
    """Base of readers of on-disk corpora; subclasses yield Rows from their protocol files."""

    Config = FileCorpusConfig
    #: one line shown when the root or a protocol file is missing
    layout: str = ""

    def __init__(self, cfg: FileCorpusConfig) -> None:
        super().__init__(cfg)
        self.root = Path(cfg.root).expanduser()
        self.skips = SkipReport(self.name)

    @property
    def name(self) -> str:
        """Registered name of the reader (for messages)."""
        return getattr(type(self), "registered_name", None) or type(self).__name__

    def protocol_files(self) -> list[Path]:
        """Protocol files whose lines `parse_line` reads (readers that scan folders override `rows`)."""
        raise NotImplementedError

    def parse_line(self, line: str, where: str) -> Row | None:
        """One protocol line → Row, None to pass over it (e.g. another subset); CorpusError if malformed."""
        raise NotImplementedError

    def rows(self) -> Iterator[Row]:
        """Rows of every protocol file; malformed lines go through the on_error policy."""
        for path in self.protocol_files():
            for where, line in self.lines(path):
                try:
                    row = self.parse_line(line, where)
                except CorpusError as exc:
                    self.fail("malformed line", str(exc))
                    continue
                if row is not None:
                    yield row

    def lines(self, path: Path) -> Iterator[tuple[str, str]]:
        """('file:line', text) per non-blank line; binary, NUL-holding or overlong lines go through on_error."""
        with open_regular(path, "protocol file", CorpusError) as fh:
            number = 0
            # readline with a limit: a multi-gigabyte "line" (a binary file named as a protocol)
            # is skipped in bounded chunks instead of being read into memory whole.
            while raw := fh.readline(MAX_LINE_BYTES + 1):
                number += 1
                where = f"{path}:{number}"
                if len(raw) > MAX_LINE_BYTES:
                    size = len(raw)
                    while not raw.endswith(b"\n") and (raw := fh.readline(1 << 20)):
                        size += len(raw)
                    self.fail("malformed line", f"{where}: line of {size} bytes is not a protocol line")
                    continue
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError:
                    self.fail("malformed line", f"{where}: not UTF-8 text (binary data in a protocol file?)")
                    continue
                if number == 1:
                    line = line.removeprefix("\ufeff")  # byte-order mark of spreadsheet exports
                if "\x00" in line:
                    self.fail("malformed line", f"{where}: NUL byte (binary data in a protocol file?)")
                    continue
                if line:
                    yield where, line

    def table(
        self,
        path: Path,
        required: Sequence[str],
        delimiter: str = ",",
        fix_header: Callable[[list[str]], list[str]] | None = None,
    ) -> Iterator[tuple[str, dict[str, str]]]:
        """(where, record) per data row of a delimited file with a header; bad rows go through on_error."""
        # Lines are parsed one by one, so a stray quote cannot swallow the rows after it; MLAAD
        # transcripts hold stray quotes, so '|' tables are read without quoting at all.
        quoting = csv.QUOTE_NONE if delimiter == "|" else csv.QUOTE_MINIMAL
        lines = self.lines(path)
        where, first = next(lines, (f"{path}:1", ""))
        header = [h.strip() for h in csv_fields(first, where, delimiter, quoting)] if first else []
        header = fix_header(header) if fix_header else header
        missing = [c for c in required if c not in header]
        if missing:
            raise CorpusError(
                f"{where}: no column(s) {', '.join(missing)} (have: {', '.join(header) or 'nothing'}; "
                f"expected header {delimiter.join(required)})"
            )
        for where, line in lines:
            try:
                fields = csv_fields(line, where, delimiter, quoting)
            except CorpusError as exc:
                self.fail("malformed line", str(exc))
                continue
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                self.fail("malformed line", f"{where}: expected {len(header)} fields, got {len(fields)}")
                continue
            yield where, {h: f.strip() for h, f in zip(header, fields)}

    def require(self, relative: str | Path) -> Path:
        """A file or folder under the root that must exist, else an error describing the expected layout."""
        path = self.root / relative
        if not self.root.is_dir():
            raise CorpusError(f"{self.name}: corpus root {self.root} does not exist (expected layout: {self.layout})")
        if not path.exists():
            raise CorpusError(f"{self.name}: {path} not found (expected layout under {self.root}: {self.layout})")
        return path

    def fail(self, reason: str, detail: str) -> None:
        """Apply the on_error policy to one bad row."""
        if self.cfg.on_error == "raise":
            raise CorpusError(detail)
        self.skips.add(reason, detail)

    def read(self) -> Utterances:
        """Index the corpus: validate every row (labels, paths inside the root, files present)."""
        ids: list[str] = []
        labels: list[int] = []
        paths: list[str] = []
        attrs: dict[str, list[str]] = {}
        # Lexical check (no symlink resolution): '..' may not climb out of the
        # root, but corpora whose files are symlinks to another disk stay valid.
        root = os.path.normpath(self.root.absolute())
        inside = root.rstrip(os.sep) + os.sep
        seen: set[str] = set()
        rows = self.rows()
        for row in tqdm(rows, desc=f"indexing {self.name}", unit=" rows", disable=None, leave=False, mininterval=1.0):
            try:
                label = self.map_label(row.label)
            except CorpusError as exc:
                self.fail("unknown label", f"{row.where}: {exc}")
                continue
            # Strings, not Paths: each pathlib operation costs microseconds, a million rows of them seconds.
            normal = os.path.normpath(os.path.join(root, row.path))  # an absolute row.path replaces the root
            if not normal.startswith(inside):
                self.fail("path outside root", f"{row.where}: {row.path} escapes the corpus root {root}")
                continue
            if self.cfg.check_files and not os.path.isfile(normal):
                self.fail("missing file", f"{row.where}: audio file {normal} not found")
                continue
            if row.utt_id in seen:
                self.fail("duplicate id", f"{row.where}: utterance id {row.utt_id!r} listed twice")
                continue
            seen.add(row.utt_id)
            ids.append(row.utt_id)
            labels.append(label)
            paths.append(normal)
            n = len(ids)
            for key, value in row.attrs.items():
                column = attrs.get(key)
                if column is None:  # not setdefault: it would build an (n-1)-item default list on every row
                    column = attrs[key] = [""] * (n - 1)
                column.append(value)
            if len(attrs) > len(row.attrs):  # rows that lack an attribute get ''
                for column in attrs.values():
                    if len(column) < n:
                        column.append("")
        if self.skips.total:
            log.warning(self.skips.summary())
        if not ids:
            try:
                files = ", ".join(str(f) for f in self.protocol_files()) or "no protocol files"
            except NotImplementedError:  # a reader that scans folders
                files = "its folders"
            skipped = f" ({self.skips.summary()})" if self.skips.total else ""
            raise CorpusError(f"{self.name}: no usable utterances under {self.root} (read from {files}){skipped}")
        attrs.setdefault("corpus", [self.name] * len(ids))
        utts = Utterances(ids, labels, attrs, FileLoader(paths), name=self.name)
        utts.skipped.update(self.skips.counts)  # index-time skips join the load-time ones
        return utts


class FileLoader:
    """Picklable audio loader over a list of paths (opened lazily, in data-loader workers if any)."""

    def __init__(self, paths: list[str], sample_rate: int = SAMPLE_RATE) -> None:
        self.paths = paths
        self.sample_rate = sample_rate

    def __call__(self, index: int):  # noqa: ANN204  returns np.ndarray
        return load_audio(self.paths[index], self.sample_rate)

    def source(self, index: int) -> str:
        """The audio file of utterance `index`."""
        return self.paths[index]


def split_line(line: str, n_fields: int | tuple[int, ...], where: str, sep: str | None = None) -> list[str]:
    """Split a protocol line and check its field count (a tuple allows several counts)."""
    fields = line.split(sep)
    allowed = (n_fields,) if isinstance(n_fields, int) else n_fields
    if len(fields) not in allowed:
        raise CorpusError(f"{where}: expected {' or '.join(map(str, allowed))} fields, got {len(fields)}: {line[:120]!r}")
    return fields


def csv_fields(line: str, where: str, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> list[str]:
    """Fields of one delimited line; a quote left open is an error instead of swallowing the next lines."""
    try:
        return next(csv.reader([line], delimiter=delimiter, quoting=quoting, strict=True))
    except csv.Error as exc:
        raise CorpusError(f"{where}: not a valid delimited line ({exc}; a quote left open?)") from None


def __getattr__(name: str) -> object:
    # The binary label map was the spoof task's all along; say where it went.
    if name in ("normalize_label", "BONAFIDE_LABELS", "SPOOF_LABELS"):
        raise AttributeError(f"{name} moved to metadg.tasks.spoof.labels (the spoof task's label map)")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

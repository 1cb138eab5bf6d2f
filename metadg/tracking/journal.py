"""Append-only JSONL journal of everything a run logs, so nothing is lost when the tracking server is."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metadg.config.files import MAX_JOURNAL_BYTES, read_text_capped

JOURNAL_NAME = "tracking.jsonl"
VERSION = 1


class JournalError(ValueError):
    """A journal line that is neither valid JSON nor a truncated last line."""


class Journal:
    """One journal file; lines are held in memory until the file's folder is known.

    Each record is one JSON line written with a single write, flushed and fsynced,
    so a crash loses at most the line being written. Several runs may share a file
    (a benchmark resumed in the same folder); every record names its run.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path: Path | None = None
        self._pending: list[str] = []
        if path is not None:
            self.attach(path)

    def attach(self, path: Path) -> None:
        """Give the journal its file and write what was held back."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pending, self._pending = self._pending, []
        for line in pending:
            self._write(line)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line."""
        line = json.dumps({"v": VERSION, **record}, ensure_ascii=False, allow_nan=False) + "\n"
        if self.path is None:
            self._pending.append(line)
        else:
            self._write(line)

    def _write(self, line: str) -> None:
        assert self.path is not None
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


@dataclass
class JournalRun:
    """The records of one run in one journal file, in order."""

    uid: str
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def start(self) -> dict[str, Any]:
        """The run's start record."""
        return self.records[0]


def read_journal(path: Path) -> list[JournalRun]:
    """The runs of a journal file; a truncated last line (crash mid-write) is ignored, any other bad line is an error."""
    path = Path(path)
    lines = read_text_capped(path, "tracking journal", MAX_JOURNAL_BYTES, JournalError).splitlines(keepends=True)
    runs: dict[str, JournalRun] = {}
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not line.endswith("\n"):
                break  # the write a crash interrupted; everything before it is intact
            raise JournalError(f"{path}:{number}: not a journal record: {exc}") from None
        if not isinstance(record, dict) or "run" not in record or "op" not in record:
            raise JournalError(f"{path}:{number}: not a journal record (needs 'run' and 'op')")
        if record["op"] == "start":
            runs[record["run"]] = JournalRun(record["run"], path, [record])
        elif record["run"] in runs:
            runs[record["run"]].records.append(record)
        else:
            raise JournalError(f"{path}:{number}: record of run {record['run']} before its start record")
    return list(runs.values())


def find_journals(paths: list[Path]) -> Iterator[Path]:
    """Journal files named by `paths`: the files themselves, or every tracking.jsonl below a folder."""
    for path in paths:
        path = Path(path)
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(path.rglob(JOURNAL_NAME))
        else:
            raise FileNotFoundError(f"{path}: no such run folder or journal file")

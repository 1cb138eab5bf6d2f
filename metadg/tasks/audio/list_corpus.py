"""`list`: any CSV/TSV file list with a path and a label column; other columns become attributes."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from metadg.config.files import open_regular
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import MAX_LINE_BYTES, CorpusError, FileCorpus, FileCorpusConfig, Row


class ListConfig(FileCorpusConfig):
    """A delimited file with a header row."""

    path: str = Field(description="CSV/TSV file listing the utterances")
    root: str | None = Field(None, description="folder that relative audio paths start from; default: the list's folder")
    path_column: str = Field("path", description="column with the audio path")
    label_column: str = Field("label", description="column with the label (class names of the task reading the list, e.g. bonafide/spoof)")
    id_column: str | None = Field(None, description="column with utterance ids; default: the path without extension")
    delimiter: str | None = Field(None, min_length=1, max_length=1, pattern=r"^[^\w\s\"\r\n]$|^\t$",
                                  description="field separator, one character (not a letter, digit, quote or "
                                  "newline); default: tab for .tsv, else sniffed from , ; | tab")


@CORPORA.register("list")
class ListCorpus(FileCorpus):
    """Any CSV/TSV file list: path, label and optional domain attributes per row."""

    Config = ListConfig
    layout = "a CSV/TSV file with a header row naming path and label columns"

    def __init__(self, cfg: ListConfig) -> None:
        if cfg.root is None:
            cfg = cfg.model_copy(update={"root": str(Path(cfg.path).expanduser().parent)})
        super().__init__(cfg)

    def class_names(self) -> list[str]:
        """The distinct labels of the label column, sorted (a read of the list; no audio)."""
        fresh = type(self)(self.cfg)  # its own skip counters: the real read counts bad rows once
        return sorted({str(row.label) for row in fresh.rows()})

    def protocol_files(self) -> list[Path]:
        """The list file."""
        return [Path(self.cfg.path).expanduser()]

    def rows(self) -> Iterator[Row]:
        """One Row per data line; a line with the wrong number of fields goes through on_error."""
        cfg: ListConfig = self.cfg
        path = Path(cfg.path).expanduser()
        if not path.exists():  # (a FIFO or folder is named as such by open_regular)
            raise CorpusError(f"list: {path} not found ({self.layout})")
        with open_regular(path, "list file", CorpusError) as fh:  # the header alone, to guess the delimiter; `table` checks every line
            head = fh.readline(MAX_LINE_BYTES).decode("utf-8", errors="replace")
        delimiter = cfg.delimiter or ("\t" if path.suffix.lower() == ".tsv" else _sniff(head))
        columns = [c for c in (cfg.path_column, cfg.label_column, cfg.id_column) if c is not None]
        for where, record in self.table(path, columns, delimiter):
            audio = Path(record.pop(cfg.path_column))
            utt = record.pop(cfg.id_column) if cfg.id_column else str(audio.with_suffix(""))
            yield Row(utt, audio, record.pop(cfg.label_column), record, where)


def _sniff(header: str) -> str:
    try:
        return csv.Sniffer().sniff(header, delimiters=",;|\t").delimiter
    except csv.Error:
        return ","

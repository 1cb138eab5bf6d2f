"""Atomic file writes: a state file is either its old or its new content, never half written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to a private temporary file beside `path`, flush it to disk, then rename it over `path`.

    A crash or kill leaves the previous file intact (and at worst a `.<name>.*.tmp` file, never
    read); concurrent writers each rename a complete file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

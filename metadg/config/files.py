"""Atomic file writes: a state file is either its old or its new content, never half written."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO


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


#: the most a file of each kind may hold: a mistaken path (a disk image, /dev/zero) must not fill memory
MAX_CONFIG_BYTES = 16 * 2**20  # YAML configs, includes and sets files; a paper grid is a few kB
MAX_METADATA_BYTES = 64 * 2**20  # checkpoint meta.json (config, dev metrics, soup records)
MAX_JOURNAL_BYTES = 2**30  # tracking.jsonl of a long offline run


def open_regular(path: str | Path, what: str, error: type[Exception] = OSError) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file; a FIFO, device or folder raises `error` naming it.

    The file is opened non-blocking and checked on the open descriptor, so a FIFO cannot hang
    the open and a swap between check and open cannot slip another kind of file in.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: {what} is a folder, not a file") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
        raise error(f"{path}: {what} is {kind}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_capped(path: str | Path, what: str, cap: int, error: type[Exception] = OSError) -> bytes:
    """The bytes of regular file `path`, refused (naming the cap) when it holds more than `cap`."""
    with open_regular(path, what, error) as fh:
        data = fh.read(cap + 1)
    if len(data) > cap:
        raise error(f"{path}: {what} is larger than {cap // 2**20} MiB, the limit for a {what}; is it the right file?")
    return data


def read_text_capped(path: str | Path, what: str, cap: int, error: type[Exception] = OSError) -> str:
    """`read_capped` decoded as UTF-8; a decoding error names the file and line."""
    data = read_capped(path, what, cap, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: {what} is not UTF-8 text (byte {data[exc.start]:#04x})") from None

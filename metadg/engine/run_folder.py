"""Run folders: a fresh one chosen without races, and one process at a time writing into one."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".lock"


class FolderInUse(OSError):
    """Another process holds the run folder's lock."""


def unique_dir(root: Path, name: str) -> Path:
    """Create and return root/name, or root/name-1, root/name-2, ... if taken (mkdir is the test: no race)."""
    root.mkdir(parents=True, exist_ok=True)
    path, i = root / name, 0
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            i += 1
            path = root / f"{name}-{i}"


class RunFolderLock:
    """An exclusive lock on `folder` (flock on folder/.lock) for as long as a process writes there.

    The kernel drops the lock when the process dies, however it dies, so a killed run never
    leaves its folder locked. The lock file keeps the holder's pid for the refusal message.
    """

    def __init__(self, folder: str | Path, what: str = "training") -> None:
        """Lock `folder` on enter; `what` names the work in the refusal message."""
        self.folder, self.what = Path(folder), what
        self.fd: int | None = None

    def __enter__(self) -> RunFolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"{self.folder}: in use by another metadg process (pid {holder}); wait for it to "
                              f"finish, or choose another folder for this {self.what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

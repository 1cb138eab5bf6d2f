"""The command line's error boundary: every error becomes one line and a documented exit status.

Expected errors (a config key, a file, a corpus line, a checkpoint, audio, a store) print
`error: <message>` naming what to fix. Anything else is a bug or an environment fault: one
line with the exception and the path of a crash report (traceback, command, versions) is
printed instead of the traceback. `--debug` shows the traceback of either kind.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

import yaml

from metadg.config import ConfigError
from metadg.engine.checkpoint import CheckpointError
from metadg.engine.resume import StopRequested
from metadg.engine.utterances import LoadError
from metadg.registry import RegistryError
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tracking.journal import JournalError

EXIT_OK = 0
#: an expected error while running: a file, a corpus or protocol line, a checkpoint, audio, a store
EXIT_FAILED = 1
#: the command line or a config is wrong (a key, a value, a name): nothing ran
EXIT_USAGE = 2
#: an unexpected exception (a bug or an environment fault); see the crash report
EXIT_CRASH = 70  # EX_SOFTWARE of sysexits.h
#: stopped by Ctrl-C / SIGTERM (the shell convention for "stopped by a signal")
EXIT_STOPPED = 130

USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, RegistryError, yaml.YAMLError)
RUN_ERRORS: tuple[type[BaseException], ...] = (OSError, CorpusError, CheckpointError, LoadError, JournalError,
                                               FloatingPointError)


def crash_dir() -> Path:
    """Where crash reports go: $METADG_CRASH_DIR, else metadg-crashes/ in the system's temporary folder."""
    return Path(os.environ.get("METADG_CRASH_DIR") or Path(tempfile.gettempdir()) / "metadg-crashes")


def write_crash_report(exc: BaseException, argv: list[str]) -> Path | None:
    """A text file with the command, versions and traceback of `exc`; None when it cannot be written."""
    import importlib.metadata as md

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    versions = []
    for dist in ("metadg", "torch", "transformers", "peft", "mlflow", "optuna", "numpy"):
        try:
            versions.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            versions.append(f"{dist} (not installed)")
    text = "\n".join([
        f"metadg crash report, {stamp} UTC", f"command: metadg {' '.join(argv)}", f"cwd: {os.getcwd()}",
        f"python {platform.python_version()} on {platform.platform()}", "versions: " + ", ".join(versions), "",
        "".join(traceback.format_exception(exc)),
    ])
    try:
        folder = crash_dir()
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f"crash-{stamp}-", suffix=".txt", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        return Path(name)
    except OSError:
        return None


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (the first line of a multi-line message, the rest elided)."""
    text = str(exc).strip() or type(exc).__name__
    first, _, rest = text.partition("\n")
    return first + (" […]" if rest.strip() else "")


def handle(exc: BaseException, argv: list[str], debug: bool) -> int:
    """Print one line for `exc` on stderr and return its exit status; re-raise under --debug."""
    if isinstance(exc, StopRequested):
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_STOPPED
    if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C, or one before the Trainer's handler was installed
        print("\ninterrupted", file=sys.stderr)
        return EXIT_STOPPED
    if isinstance(exc, BrokenPipeError) and exc.filename is None:  # stdout closed early (`| head`): not an error
        try:  # Python would complain again when flushing stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILED
    if debug:
        raise exc
    if isinstance(exc, USAGE_ERRORS):
        print(f"error: {one_line(exc) if isinstance(exc, yaml.YAMLError) else exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, RUN_ERRORS):
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    report = write_crash_report(exc, argv)
    where = f"crash report: {report}" if report else "no crash report could be written; rerun with --debug"
    print(f"error: unexpected {type(exc).__name__}: {one_line(exc)} ({where})", file=sys.stderr)
    return EXIT_CRASH

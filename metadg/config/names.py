"""Names that become paths (evaluation sets, runs, studies, benchmarks): plain file names, nothing that escapes a folder."""

from __future__ import annotations

import unicodedata

from metadg.config.schema import ConfigError

#: bidirectional embedding/override/isolate controls: they make a name display as something else
BIDI_CONTROLS = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
MAX_NAME_BYTES = 255  # the usual file-name limit (ext4, APFS, NTFS in UTF-16 units)


def name_problem(value: object) -> str | None:
    """Why `value` cannot be one file name (None when it can)."""
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value.strip():
        return "must not be empty"
    if value in (".", ".."):
        return f"{value!r} is not a file name"
    if "/" in value or "\\" in value:
        return "must not contain '/' or '\\' (it becomes one file or folder name)"
    for ch in value:
        if ch in BIDI_CONTROLS:
            return f"must not contain the bidirectional control U+{ord(ch):04X}"
        if unicodedata.category(ch) == "Cc":
            return f"must not contain the control character U+{ord(ch):04X}"
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def plain_name(value: object, where: str) -> str:
    """`value` if it is a plain file name, else a ConfigError naming `where` and the reason."""
    problem = name_problem(value)
    if problem:
        raise ConfigError(f"{where}: {value!r} {problem}")
    return value  # type: ignore[return-value]


def nested_name(value: object, where: str) -> str:
    """`value` if it is plain file names joined by '/' (a folder inside a folder, never outside it)."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: must be a string, got {type(value).__name__}")
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":"):
        raise ConfigError(f"{where}: {value!r} must be a relative folder name inside its parent folder, not absolute")
    if ".." in value.split("/"):
        raise ConfigError(f"{where}: {value!r} must be a relative folder name inside its parent folder, without '..'")
    for part in value.split("/"):
        problem = name_problem(part)
        if problem:
            raise ConfigError(f"{where}: {value!r}: part {part!r} {problem}")
    return value

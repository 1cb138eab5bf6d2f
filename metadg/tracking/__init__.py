"""MLflow tracking: the Tracker (tracker.py), its offline journal (journal.py) and `metadg upload` (upload.py)."""

from __future__ import annotations

from metadg.tracking.journal import JOURNAL_NAME, Journal, read_journal
from metadg.tracking.tracker import (
    FALLBACK_JOURNAL_DIR,
    UID_TAG,
    Tracker,
    experiment_id,
    flatten,
    http_limits,
    make_client,
    sqlite_artifact_root,
    tracking_errors,
)

# `upload` (the function) is not re-exported: it would hide the submodule metadg.tracking.upload.
__all__ = [
    "FALLBACK_JOURNAL_DIR", "JOURNAL_NAME", "UID_TAG", "Journal", "Tracker", "experiment_id", "flatten",
    "http_limits", "make_client", "read_journal", "sqlite_artifact_root", "tracking_errors",
]

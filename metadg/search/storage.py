"""Optuna storage for a search: SQLAlchemy URLs or a journal file, both with trial heartbeats."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

# BaseHeartbeat is the interface Study.optimize and fail_stale_trials use to find
# dead workers; Optuna implements it only for RDBStorage, so the journal storage
# below implements it too (pinned optuna; the interface is small and stable).
from optuna.storages._heartbeat import BaseHeartbeat

from metadg.config import ConfigError

HEARTBEAT_ATTR = "metadg:heartbeat"
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's journal file storage, plus heartbeats kept as a trial system attribute.

    A running trial's worker writes the wall-clock time every `heartbeat_interval`
    seconds; a RUNNING trial whose last heartbeat is older than `grace_period` is
    stale (its worker died) and Optuna's `fail_stale_trials` marks it FAIL. The
    journal is a local (or NFS) file, so all workers read one clock.
    """

    def __init__(self, path: str, heartbeat_interval: int, grace_period: int, callback: StaleCallback | None) -> None:
        super().__init__(JournalFileBackend(path))
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.stale_callback = callback

    def record_heartbeat(self, trial_id: int) -> None:
        """Write the current time on the trial (called from Optuna's heartbeat thread)."""
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker already failed this trial as stale

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            beat = trial.system_attrs.get(HEARTBEAT_ATTR)
            if beat is None and trial.datetime_start is not None:
                beat = trial.datetime_start.timestamp()
            if beat is not None and now - beat > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        """Seconds between heartbeats."""
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        """Called with each trial this process failed as stale."""
        return self.stale_callback


def open_storage(url: str, heartbeat_interval: int, grace_period: int, callback: StaleCallback | None = None) -> Any:
    """A storage for `url` (SQLAlchemy URL or journal:PATH) with heartbeats; errors name search.storage."""
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return HeartbeatJournalStorage(str(path), heartbeat_interval, grace_period, callback)
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:"):
            db = url.split(":///", 1)[-1]
            if db and db != ":memory:":
                Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Several local processes on one SQLite file take turns on its write
            # lock; wait for it instead of failing after SQLite's default 5 s.
            engine_kwargs["connect_args"] = {"timeout": 120}
        else:
            engine_kwargs["pool_pre_ping"] = True  # servers drop idle connections during long trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                              grace_period=grace_period, heartbeat_stale_trial_callback=callback)
    except (ArgumentError, ImportError, ValueError) as exc:  # a malformed URL or a database driver not installed
        raise ConfigError(f"search.storage: cannot use {masked(url)!r}: {type(exc).__name__}: {exc}") from None
    except SQLAlchemyError as exc:  # e.g. the database server is unreachable
        raise OSError(f"search.storage: cannot open {masked(url)!r}: {exc}") from None


def masked(url: str) -> str:
    """The URL with any password replaced by ***, for messages and MLflow params."""
    if url.startswith("journal:"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url

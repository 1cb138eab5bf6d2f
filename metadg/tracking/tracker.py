"""MLflow tracking: one run per experiment, nested runs for benchmarks, artifacts, offline journal."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metadg.config import TrackingConfig
from metadg.tracking.journal import JOURNAL_NAME, Journal, JournalError, read_journal

log = logging.getLogger(__name__)

# Every run carries this tag: `metadg upload` finds a run created earlier (on
# this server, or by an interrupted upload) by it instead of creating a twin.
UID_TAG = "metadg.run_uid"
# Where a run started without a folder keeps its journal when no child run
# names one (a benchmark's parent is otherwise journaled beside its cells).
FALLBACK_JOURNAL_DIR = "metadg-journal"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} → {'a.b': '1'}: MLflow params are flat strings."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def sqlite_artifact_root(uri: str) -> str | None:
    """./mlartifacts beside a sqlite store (what `mlflow ui` serves), as a file URI."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :]).expanduser().resolve()
    return (db.parent / "mlartifacts").as_uri()


_HTTP_ENV_LOCK = threading.Lock()


@contextmanager
def http_limits(cfg: TrackingConfig) -> Iterator[None]:
    """Apply cfg's HTTP timeout and retries to the MLflow calls made inside the block only.

    MLflow reads these from the environment on every request and by default
    retries 7 times with exponential back-off (minutes against a dead server);
    setting them only around metadg's own calls leaves other MLflow users alone.
    """
    values = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.http_retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(cfg.http_timeout_s),
    }
    # urllib3 logs a warning per retry; the Tracker's own single warning says it all.
    pool_log = logging.getLogger("urllib3.connectionpool")
    with _HTTP_ENV_LOCK:
        saved = {k: os.environ.get(k) for k in values}
        saved_level = pool_log.level
        os.environ.update(values)
        pool_log.setLevel(logging.ERROR)
        try:
            yield
        finally:
            pool_log.setLevel(saved_level)
            for key, old in saved.items():
                if old is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = old


def tracking_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the tracking backend failed': any Exception a backend call raises.

    Not only MlflowException and OSError: a corrupt sqlite store raises SQLAlchemy's errors, a
    server answering wrong-shaped JSON a KeyError or TypeError deep in the client. Tracking must
    never stop training; the journal keeps every record for `metadg upload`.
    """
    return (Exception,)


def make_client(cfg: TrackingConfig) -> Any:
    """An MlflowClient for cfg.uri (creating a sqlite store's folder), MLflow's INFO chatter silenced."""
    # MLflow logs schema migrations of a new sqlite store at INFO; keep the
    # console for our own progress unless the user asked for MLflow's chatter.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    if cfg.uri.startswith("sqlite:///"):
        Path(cfg.uri[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=cfg.uri)


def experiment_id(client: Any, name: str, uri: str, artifact_location: str | None) -> str:
    """Id of the named experiment, created (artifacts beside a sqlite store by default) if missing."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location or sqlite_artifact_root(uri))


@dataclass
class _Run:
    uid: str
    server_id: str | None
    journal: Journal | None  # None: a run this Tracker did not start (logged directly, not journaled)


class Tracker:
    """A thin MlflowClient wrapper with no global state; disabled → every call is a no-op.

    Every call is also appended to the run folder's tracking.jsonl. When the
    backend is unreachable at start or fails mid-run, the Tracker warns once,
    stops calling it, and the run goes on journaled only; `metadg upload`
    replays the journal later.
    """

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.client = None
        self.experiment_id: str | None = None
        self.offline_reason: str | None = None
        self._runs: dict[str, _Run] = {}
        if not cfg.enabled:
            return
        try:  # building the client is inside the fallback too: an unusable store must not stop the run
            self.client = make_client(cfg)
            with http_limits(cfg):
                self.experiment_id = experiment_id(self.client, cfg.experiment, cfg.uri, cfg.artifact_location)
        except tracking_errors() as exc:
            self._go_offline(exc)

    @property
    def enabled(self) -> bool:
        """True when runs are recorded (on the backend, or in the journal while it is unreachable)."""
        return self.cfg.enabled

    @property
    def online(self) -> bool:
        """True while the backend answers."""
        return self.client is not None and self.offline_reason is None

    def _go_offline(self, exc: BaseException) -> None:
        if self.offline_reason is not None:
            return
        self.offline_reason = f"{type(exc).__name__}: {exc}"
        log.warning(
            "MLflow tracking at %s failed (%s). Training goes on without it: this and later runs of this "
            "tracker log only to tracking.jsonl in their run folders; send them with `metadg upload RUN_FOLDER` later.",
            self.cfg.uri, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
        )

    def _send(self, fn: Callable[[], Any]) -> bool:
        """Call the backend unless offline; a failure turns the tracker offline (warned once)."""
        if not self.online:
            return False
        try:
            with http_limits(self.cfg):
                fn()
            return True
        except tracking_errors() as exc:
            self._go_offline(exc)
            return False

    def _record(self, run_id: str | None, record: dict[str, Any], send: Callable[[str], Any]) -> None:
        """Send one operation to the backend and journal it with whether it arrived."""
        if not self.enabled or run_id is None:
            return
        run = self._runs.get(run_id) or self._runs.setdefault(run_id, _Run(run_id, run_id, None))
        sent = run.server_id is not None and self._send(lambda: send(run.server_id))
        if run.journal is not None:
            run.journal.append({"run": run.uid, "synced": sent, **record})
        elif not sent:
            log.warning("run %s was not started by this tracker and the backend failed: %s not recorded", run_id, record["op"])

    def start(
        self,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_dir: str | Path | None = None,
    ) -> str | None:
        """Create a run (nested under `parent_run_id` if given), journaled in run_dir; log its flattened params."""
        if not self.enabled:
            return None
        uid = uuid.uuid4().hex
        parent = self._runs.get(parent_run_id) if parent_run_id else None
        journal = Journal(Path(run_dir) / JOURNAL_NAME if run_dir else None)
        if parent is not None and parent.journal is not None and parent.journal.path is None and run_dir:
            parent.journal.attach(Path(run_dir).parent / JOURNAL_NAME)
        parent_server_id = parent.server_id if parent is not None else parent_run_id
        all_tags = {**{k: str(v) for k, v in (tags or {}).items()}, UID_TAG: uid}
        if parent_server_id:
            all_tags["mlflow.parentRunId"] = parent_server_id
        now = int(time.time() * 1000)
        created: list[str] = []
        if self.experiment_id is not None:
            self._send(lambda: created.append(
                self.client.create_run(self.experiment_id, start_time=now, run_name=run_name, tags=all_tags).info.run_id))
        server_id = created[0] if created else None
        journal.append({
            "run": uid, "op": "start", "synced": server_id is not None, "run_id": server_id, "time": now,
            "uri": self.cfg.uri, "experiment": self.cfg.experiment, "artifact_location": self.cfg.artifact_location,
            "name": run_name, "tags": all_tags, "parent": parent.uid if parent is not None else None,
            "parent_run_id": parent_server_id,
        })
        run_id = server_id or uid
        self._runs[run_id] = _Run(uid, server_id, journal)
        if params:
            self.log_params(run_id, params)
        return run_id

    def reopen(self, run_id: str | None, run_dir: str | Path | None = None) -> str | None:
        """Mark a run this tracker or an earlier process started RUNNING again (a stopped run resumes into it)."""
        if not self.enabled or run_id is None:
            return None
        if run_id not in self._runs:
            journal_path = Path(run_dir) / JOURNAL_NAME if run_dir else None
            try:
                known = read_journal(journal_path) if journal_path is not None and journal_path.is_file() else []
            except JournalError as exc:  # a damaged journal must not block resuming: go on without its past
                log.warning("%s; resuming without it (its records stay in the file for `metadg upload`)", exc)
                known = []
            match = next((r for r in known if run_id in (r.uid, r.start.get("run_id"))), None)
            if match is not None:
                self._runs[run_id] = _Run(match.uid, match.start.get("run_id"), Journal(journal_path))
        self._record(run_id, {"op": "reopen"}, lambda server_id: self.client.update_run(server_id, status="RUNNING"))
        return run_id

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        """Log nested params under dotted names."""
        flat = {k: v[:6000] for k, v in flatten(params).items()}

        def send(server_id: str) -> None:
            from mlflow.entities import Param

            items = [Param(k, v) for k, v in flat.items()]
            for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
                self.client.log_batch(server_id, params=items[i : i + 100])

        self._record(run_id, {"op": "params", "params": flat}, send)

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite scalar metrics at `step`."""
        now, step = int(time.time() * 1000), step or 0
        values = {
            _metric_name(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if not values:
            return

        def send(server_id: str) -> None:
            from mlflow.entities import Metric

            items = [Metric(k, v, now, step) for k, v in values.items()]
            for i in range(0, len(items), 1000):
                self.client.log_batch(server_id, metrics=items[i : i + 1000])

        self._record(run_id, {"op": "metrics", "step": step, "time": now, "metrics": values}, send)

    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        """Set string tags on a run."""
        values = {k: str(v) for k, v in tags.items()}

        def send(server_id: str) -> None:
            from mlflow.entities import RunTag

            self.client.log_batch(server_id, tags=[RunTag(k, v) for k, v in values.items()])

        self._record(run_id, {"op": "tags", "tags": values}, send)

    def log_artifact(self, run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts (the journal keeps the path to it)."""
        if not self.enabled or run_id is None:
            return
        path = Path(path).resolve()
        if not path.exists():  # our caller's mistake, not the backend's: must not turn tracking offline
            raise FileNotFoundError(f"{path}: no such artifact to log")

        def send(server_id: str) -> None:
            if path.is_dir():
                self.client.log_artifacts(server_id, str(path), artifact_path)
            else:
                self.client.log_artifact(server_id, str(path), artifact_path)

        record: dict[str, Any] = {"op": "artifact", "path": str(path), "artifact_path": artifact_path}
        self._record(run_id, self._with_rel(run_id, path, record), send)

    def _with_rel(self, run_id: str, path: Path, record: dict[str, Any]) -> dict[str, Any]:
        """`record` plus the path relative to the run's journal, so a run folder that moved can still be uploaded."""
        run = self._runs.get(run_id)
        if run is not None and run.journal is not None and run.journal.path is not None:
            folder = run.journal.path.parent.resolve()
            if path.is_relative_to(folder):
                record["rel"] = str(path.relative_to(folder))
        return record

    def log_model(self, run_id: str | None, run_dir: str | Path, artifact_path: str = "detector") -> None:
        """Log the run folder's detector as an MLflow pyfunc model; journaled, so `metadg upload` logs it if offline."""
        if not self.enabled or run_id is None:
            return
        path = Path(run_dir).resolve()
        if not (path / "checkpoints" / "best").is_dir():  # our caller's mistake: must not turn tracking offline
            raise FileNotFoundError(f"{path}: no checkpoints/best to log as a model")

        def send(server_id: str) -> None:
            from metadg.deploy.pyfunc import log_detector  # here, not at the top: tracking loads without the model stack

            log_detector(path, run_id=server_id, tracking_uri=self.cfg.uri, artifact_path=artifact_path)

        record: dict[str, Any] = {"op": "model", "path": str(path), "artifact_path": artifact_path}
        self._record(run_id, self._with_rel(run_id, path, record), send)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        now = int(time.time() * 1000)
        self._record(run_id, {"op": "end", "status": status, "time": now},
                     lambda server_id: self.client.set_terminated(server_id, status=status, end_time=now))
        run = self._runs.get(run_id) if run_id else None
        if run is not None and run.journal is not None and run.journal.path is None:
            run.journal.attach(Path(FALLBACK_JOURNAL_DIR) / JOURNAL_NAME)
            log.info("run %s had no run folder; its tracking journal is %s", run_id, run.journal.path)


def _metric_name(name: str) -> str:
    # MLflow allows letters, digits, _-./ and spaces; anything else (e.g. from
    # a domain name) becomes '_' rather than failing the whole batch.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)

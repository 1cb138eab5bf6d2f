"""`metadg upload`: replay run journals (tracking.jsonl) to an MLflow backend, idempotently."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metadg.config import TrackingConfig
from metadg.tracking.journal import Journal, JournalRun, find_journals, read_journal
from metadg.tracking.tracker import UID_TAG, experiment_id, http_limits, make_client

log = logging.getLogger(__name__)


@dataclass
class UploadReport:
    """What an upload did, summed over runs."""

    runs: int = 0
    created: int = 0
    up_to_date: int = 0
    params: int = 0
    metrics: int = 0
    artifacts: int = 0
    skipped: list[str] = field(default_factory=list)  # what could not be sent, one line each

    def format(self) -> str:
        """One summary line plus one line per skipped item."""
        lines = [f"{self.runs} run(s): {self.created} created, {self.up_to_date} already up to date; sent "
                 f"{self.params} param(s), {self.metrics} metric value(s), {self.artifacts} artifact(s)"]
        lines += [f"  skipped: {s}" for s in self.skipped]
        return "\n".join(lines)


def _ordered(runs: list[JournalRun]) -> list[JournalRun]:
    """Parents before their children, so a child can point at its parent's server id."""
    by_uid = {r.uid: r for r in runs}

    def depth(run: JournalRun) -> int:
        seen, d = {run.uid}, 0
        while (parent := run.start.get("parent")) in by_uid and parent not in seen:
            seen.add(parent)
            run, d = by_uid[parent], d + 1
        return d

    return sorted(runs, key=depth)


class Uploader:
    """Replays journals to one backend; the run ids it resolves are shared across journals of one upload."""

    def __init__(self, uri: str | None = None, cfg: TrackingConfig | None = None) -> None:
        self.uri = uri
        self.cfg = cfg or TrackingConfig()
        self.clients: dict[str, Any] = {}
        self.server_ids: dict[tuple[str, str], str] = {}  # (uri, run uid) → server run id
        self.report = UploadReport()

    def upload(self, paths: Sequence[str | Path]) -> UploadReport:
        """Upload every run journaled under `paths` (run folders, folders of them, or journal files)."""
        runs = [run for journal in find_journals([Path(p) for p in paths]) for run in read_journal(journal)]
        if not runs:
            raise FileNotFoundError(f"no tracking.jsonl journal under {', '.join(map(str, paths))}")
        for run in _ordered(runs):
            self._upload_run(run)
        return self.report

    def _client(self, uri: str) -> Any:
        if uri not in self.clients:
            self.clients[uri] = make_client(self.cfg.model_copy(update={"uri": uri}))
        return self.clients[uri]

    def _upload_run(self, run: JournalRun) -> None:
        start = run.start
        uri = self.uri or start["uri"]
        same_backend = uri == start["uri"]
        cfg = self.cfg.model_copy(update={"uri": uri})
        self.report.runs += 1
        client = self._client(uri)
        with http_limits(cfg):
            server_id, created = self._resolve(client, run, uri, same_backend)
            # A run the backend no longer has (its store was deleted or replaced) gets every record again,
            # whatever was synced to the old one.
            todo = _pending(run.records, uri, same_backend and not created, everything=created)
            if not todo:
                self.report.up_to_date += 1
                return
            self._replay(client, run, server_id, todo)
        Journal(run.path).append({"run": run.uid, "op": "uploaded", "uri": uri, "run_id": server_id,
                                  "time": int(time.time() * 1000)})
        log.info("%s (%s) → run %s on %s", start["name"], run.path, server_id, uri)

    def _resolve(self, client: Any, run: JournalRun, uri: str, same_backend: bool) -> tuple[str, bool]:
        """The run's id on the backend (the one it got online, one an earlier upload made, or a new one); new?"""
        start = run.start
        if (uri, run.uid) in self.server_ids:
            return self.server_ids[(uri, run.uid)], False
        exp_id = experiment_id(client, start["experiment"], uri, start.get("artifact_location") if same_backend else None)
        found = client.search_runs([exp_id], filter_string=f"tags.`{UID_TAG}` = '{run.uid}'", max_results=1)
        created = not found
        if found:
            server_id = found[0].info.run_id
        else:
            tags = {k: v for k, v in start["tags"].items() if k != "mlflow.parentRunId"}
            parent = self._parent_id(client, run, uri, same_backend, exp_id)
            if parent:
                tags["mlflow.parentRunId"] = parent
            server_id = client.create_run(exp_id, start_time=start["time"], run_name=start["name"], tags=tags).info.run_id
            self.report.created += 1
        self.server_ids[(uri, run.uid)] = server_id
        return server_id, created

    def _parent_id(self, client: Any, run: JournalRun, uri: str, same_backend: bool, exp_id: str) -> str | None:
        start = run.start
        if start.get("parent") is None:
            # A parent this process did not start: only its id on the original backend is known.
            return start.get("parent_run_id") if same_backend else None
        if (uri, start["parent"]) in self.server_ids:
            return self.server_ids[(uri, start["parent"])]
        found = client.search_runs([exp_id], filter_string=f"tags.`{UID_TAG}` = '{start['parent']}'", max_results=1)
        if found:
            return found[0].info.run_id
        if same_backend and start.get("parent_run_id"):
            return start["parent_run_id"]
        self.report.skipped.append(f"{run.path}: parent run {start['parent']} of {start['name']!r} is on no journal "
                                   "given nor on the server; the run is uploaded without its parent")
        return None

    def _replay(self, client: Any, run: JournalRun, server_id: str, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        data = client.get_run(server_id).data
        have_params = dict(data.params)
        history: dict[str, set[tuple[int, int, float]]] = {}
        for rec in records:
            op = rec["op"]
            if op == "params":
                new = [Param(k, v) for k, v in rec["params"].items() if k not in have_params]
                for k, v in rec["params"].items():
                    if k in have_params and have_params[k] != v:
                        self.report.skipped.append(f"{run.path}: param {k}={v!r} differs from {have_params[k]!r} on the server")
                for i in range(0, len(new), 100):
                    client.log_batch(server_id, params=new[i : i + 100])
                have_params.update({p.key: p.value for p in new})
                self.report.params += len(new)
            elif op == "metrics":
                new = []
                for key, value in rec["metrics"].items():
                    if key not in history:
                        history[key] = {(m.step, m.timestamp, m.value) for m in client.get_metric_history(server_id, key)}
                    point = (rec["step"], rec["time"], value)
                    if point not in history[key]:
                        new.append(Metric(key, value, rec["time"], rec["step"]))
                        history[key].add(point)
                for i in range(0, len(new), 1000):
                    client.log_batch(server_id, metrics=new[i : i + 1000])
                self.report.metrics += len(new)
            elif op == "tags":
                client.log_batch(server_id, tags=[RunTag(k, v) for k, v in rec["tags"].items()])
            elif op == "artifact":
                self._artifact(client, run, server_id, rec)
            elif op == "model":
                self._model(run, server_id, rec, client.tracking_uri)
            elif op == "reopen":  # a resumed run; its later `end` record sets the final status
                client.update_run(server_id, status="RUNNING")
            elif op == "end":
                client.set_terminated(server_id, status=rec["status"], end_time=rec["time"])

    def _model(self, run: JournalRun, server_id: str, rec: dict[str, Any], uri: str) -> None:
        """A detector the run logged while offline: logged now from its run folder."""
        path = _existing(run, rec)
        if path is None:
            self.report.skipped.append(f"{run.path}: model of run folder {rec['path']} no longer exists")
            return
        from metadg.deploy.pyfunc import log_detector  # here, not at the top: uploads of plain runs need no model stack

        log_detector(path, run_id=server_id, tracking_uri=uri, artifact_path=rec.get("artifact_path") or "detector")
        self.report.artifacts += 1

    def _artifact(self, client: Any, run: JournalRun, server_id: str, rec: dict[str, Any]) -> None:
        path = _existing(run, rec)
        if path is None:
            self.report.skipped.append(f"{run.path}: artifact {rec['path']} no longer exists")
            return
        if path.is_dir():
            client.log_artifacts(server_id, str(path), rec.get("artifact_path"))
        else:
            client.log_artifact(server_id, str(path), rec.get("artifact_path"))
        self.report.artifacts += 1


def _existing(run: JournalRun, rec: dict[str, Any]) -> Path | None:
    """A journaled path where it is now: relative to the journal (a moved run folder) or as recorded."""
    candidates = ([run.path.parent / rec["rel"]] if rec.get("rel") else []) + [Path(rec["path"])]
    return next((p for p in candidates if p.exists()), None)


def _pending(records: list[dict[str, Any]], uri: str, same_backend: bool, everything: bool = False) -> list[dict[str, Any]]:
    """Records still to send to `uri`: after its last upload marker, and (on the original backend) not yet synced.

    `everything`: every record but the start (for a run just created on the backend).
    """
    last = 0 if everything else max(
        (i for i, r in enumerate(records) if r["op"] == "uploaded" and r.get("uri") == uri), default=0)
    return [r for r in records[last:] if r["op"] not in ("start", "uploaded") and not (same_backend and r.get("synced"))]


def upload(paths: Sequence[str | Path], uri: str | None = None, cfg: TrackingConfig | None = None) -> UploadReport:
    """Send the journaled runs under `paths` to `uri` (default: the backend each run was started with)."""
    return Uploader(uri, cfg).upload(paths)

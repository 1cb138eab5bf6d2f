"""`metadg register`: a trained run's detector in the MLflow Model Registry, under a name and an alias.

The run's MLflow run is found from the run folder (results.json `run_id`, else its tracking.jsonl
journal); a run trained offline is uploaded first (`metadg upload`), and a run trained with tracking
off gets an MLflow run made for it now, journaled in its folder so that a second `register` finds it.
The detector is logged into that run unless it already holds one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from metadg.config import build_experiment
from metadg.engine.checkpoint import checkpoint_of, read_checkpoint
from metadg.tracking import JOURNAL_NAME, UID_TAG, Tracker, make_client, read_journal

log = logging.getLogger(__name__)


def _run_folder(run: str | Path) -> Path:
    """The run folder of `run` (a run folder, or its checkpoints/best)."""
    folder = Path(run).expanduser().resolve()
    if folder.name == "best" and folder.parent.name == "checkpoints":
        folder = folder.parent.parent
    if not (folder / "checkpoints" / "best").is_dir():
        # The MLflow run made for it is journaled in the run folder: a bare checkpoint folder has none to keep it.
        raise FileNotFoundError(f"{folder}: not a run folder (no checkpoints/best); give the folder a training run wrote")
    return folder


def _results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:  # a damaged results.json: the journal may still name the run
        log.warning("%s: not valid JSON; looking for the run in its tracking journal", path)
        data = {}
    return data if isinstance(data, dict) else {}


def _exists(client: Any, run_id: str | None) -> bool:
    if not run_id:
        return False
    try:
        client.get_run(run_id)
        return True
    except Exception:  # MlflowException (not found) or a malformed id the store refuses
        return False


def _journal_runs(folder: Path) -> list[Any]:
    path = folder / JOURNAL_NAME
    return read_journal(path) if path.is_file() else []


def _by_uid(client: Any, uid: str) -> str | None:
    """The run tagged with metadg's uid (made online or by an upload), in any experiment of the store."""
    ids = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(ids, filter_string=f"tags.`{UID_TAG}` = '{uid}'", max_results=1) if ids else []
    return found[0].info.run_id if found else None


def find_mlflow_run(run: str | Path, tracking_uri: str) -> str | None:
    """The MLflow run id of a run folder on `tracking_uri` (results.json, then its journal), or None."""
    folder = _run_folder(run)
    client = make_client(_tracking_cfg(folder, tracking_uri))
    recorded = _results(folder).get("run_id")
    if _exists(client, recorded):
        return recorded
    # Latest first: a resumed or re-registered run folder journals several runs; the last one is the live one.
    for jr in reversed(_journal_runs(folder)):
        uploaded = [r.get("run_id") for r in jr.records if r.get("op") == "uploaded" and r.get("uri") == tracking_uri]
        for candidate in [jr.start.get("run_id"), *reversed(uploaded)]:
            if _exists(client, candidate):
                return candidate
        if (found := _by_uid(client, jr.uid)) is not None:
            return found
    return None


def _experiment(folder: Path) -> Any:
    checkpoint = checkpoint_of(folder)
    _, meta = read_checkpoint(checkpoint)
    return build_experiment(meta["config"], source=str(checkpoint / "meta.json"))


def _tracking_cfg(folder: Path, uri: str) -> Any:
    """The run's tracking settings (experiment name, artifact location, timeouts), enabled, at `uri`."""
    return _experiment(folder).tracking.model_copy(update={"uri": uri, "enabled": True})


def resolve_uri(run: str | Path, tracking_uri: str | None = None) -> str:
    """Where to register: `tracking_uri`, else MLFLOW_TRACKING_URI, else the tracking URI of the run's config."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or _experiment(_run_folder(run)).tracking.uri


def ensure_mlflow_run(run: str | Path, tracking_uri: str) -> str:
    """The run folder's MLflow run on `tracking_uri`: found, uploaded from its journal, or made now (journaled)."""
    folder = _run_folder(run)
    found = find_mlflow_run(folder, tracking_uri)
    if found is not None:
        return found
    if _journal_runs(folder):  # trained while the server was unreachable: send what it journaled
        from metadg.tracking.upload import upload

        log.info("%s: its MLflow run is not on %s; uploading its tracking journal first", folder, tracking_uri)
        upload([folder], uri=tracking_uri, cfg=_tracking_cfg(folder, tracking_uri))
        found = find_mlflow_run(folder, tracking_uri)
        if found is not None:
            return found
    return _new_run(folder, tracking_uri)


def _new_run(folder: Path, tracking_uri: str) -> str:
    """An MLflow run for a run trained with tracking off: its config, results and config.yaml, then FINISHED."""
    cfg = _tracking_cfg(folder, tracking_uri)
    _, meta = read_checkpoint(checkpoint_of(folder))
    results = _results(folder)
    tracker = Tracker(cfg)
    run_id = tracker.start(results.get("name") or meta["config"].get("name", folder.name), params=meta["config"],
                           tags={"metadg.registered_from": str(folder)}, run_dir=folder)
    if not tracker.online or run_id is None:
        raise ConnectionError(f"MLflow at {tracking_uri} is unreachable ({tracker.offline_reason}); nothing registered")
    log.warning("%s was trained with tracking off: created MLflow run %s on %s for it (journaled in its %s)",
                folder, run_id, tracking_uri, JOURNAL_NAME)
    metrics = {f"dev/{k}": v for k, v in (results.get("dev") or meta.get("dev") or {}).items()}
    metrics |= {f"eval/{s}/{k}": v for s, m in (results.get("eval") or {}).items() for k, v in m.items()}
    if results.get("trainable_params"):
        metrics["trainable_params"] = results["trainable_params"]
    tracker.log_metrics(run_id, metrics, results.get("best_step"))
    if (folder / "config.yaml").is_file():
        tracker.log_artifact(run_id, folder / "config.yaml")
    tracker.end(run_id, "FINISHED")
    return run_id


def logged_detector(run_id: str, tracking_uri: str, artifact_path: str = "detector") -> str | None:
    """`models:/<id>` of the newest READY detector model logged by `run_id`, or None."""
    client = make_client(_uri_cfg(tracking_uri))
    exp_id = client.get_run(run_id).info.experiment_id
    found = [m for m in client.search_logged_models(
        [exp_id], filter_string=f"source_run_id = '{run_id}' AND name = '{artifact_path}'")
        if str(m.status).endswith("READY")]
    return f"models:/{max(found, key=lambda m: m.creation_timestamp).model_id}" if found else None


def _uri_cfg(uri: str) -> Any:
    from metadg.config import TrackingConfig

    return TrackingConfig(uri=uri)


def register(run: str | Path, name: str, alias: str | None = None, tracking_uri: str | None = None,
             *, artifact_path: str = "detector") -> str:
    """Register the run's detector (logging it first if its MLflow run has none) as `name`, set `alias`; the version."""
    import mlflow

    from metadg.deploy.pyfunc import log_detector, using_uri

    folder = _run_folder(run)
    uri = resolve_uri(folder, tracking_uri)
    run_id = ensure_mlflow_run(folder, uri)
    model_uri = logged_detector(run_id, uri, artifact_path)
    if model_uri is None:
        model_uri = log_detector(folder, run_id=run_id, tracking_uri=uri, artifact_path=artifact_path).model_uri
    client = make_client(_uri_cfg(uri))
    # Registering the same logged model twice would only add a twin version: reuse the one there is.
    same = [v for v in client.search_model_versions(f"name = '{name}' AND run_id = '{run_id}'") if v.source == model_uri]
    if same:
        version = max(same, key=lambda v: int(v.version))
    else:
        with using_uri(uri):
            version = mlflow.register_model(model_uri, name)
    if alias:
        client.set_registered_model_alias(name, alias, str(version.version))
    log.info("registered %s as %s version %s (%s, MLflow run %s)", folder, name, version.version, model_uri, run_id)
    return str(version.version)

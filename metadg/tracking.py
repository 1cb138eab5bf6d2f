"""MLflow tracking: one run per experiment, nested runs for benchmarks, artifacts."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metadg.config import TrackingConfig



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


class Tracker:
    """A thin MlflowClient wrapper with no global state; disabled → every call is a no-op."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.client = None
        self.experiment_id: str | None = None
        if not cfg.enabled:
            return
        # MLflow logs schema migrations of a new sqlite store at INFO; keep the
        # console for our own progress unless the user asked for MLflow's chatter.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        from mlflow.tracking import MlflowClient

        if cfg.uri.startswith("sqlite:///"):
            Path(cfg.uri[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=cfg.uri)
        exp = self.client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            location = cfg.artifact_location or sqlite_artifact_root(cfg.uri)
            self.experiment_id = self.client.create_experiment(cfg.experiment, artifact_location=location)
        else:
            self.experiment_id = exp.experiment_id

    @property
    def enabled(self) -> bool:
        """True when runs are recorded."""
        return self.client is not None

    def start(
        self,
        run_name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str | None:
        """Create a run (nested under `parent_run_id` if given) and log its flattened params."""
        if self.client is None:
            return None
        all_tags = dict(tags or {})
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=all_tags)
        if params:
            self.log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str | None) -> str | None:
        """Mark an existing run RUNNING again (a crashed or stopped run resumes into it)."""
        if self.client is None or run_id is None:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None:
        """Log nested params under dotted names."""
        if self.client is None or run_id is None:
            return
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow caps params per batch at 100
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log finite scalar metrics at `step`."""
        if self.client is None or run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_name(k), float(v), now, step or 0)
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str | None, tags: Mapping[str, Any]) -> None:
        """Set string tags on a run."""
        if self.client is None or run_id is None:
            return
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or a folder into the run's artifacts."""
        if self.client is None or run_id is None:
            return
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str | None, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        if self.client is None or run_id is None:
            return
        self.client.set_terminated(run_id, status=status)


def _metric_name(name: str) -> str:
    # MLflow allows letters, digits, _-./ and spaces; anything else (e.g. from
    # a domain name) becomes '_' rather than failing the whole batch.
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)

"""A trained run's Detector as an MLflow `pyfunc` model: logged into a run, loaded back, served over HTTP.

The model bundles the run's best checkpoint (trainable.safetensors + meta.json), its config.yaml and
results.json, a README (the model card) and, for a small local Hugging Face backbone, that folder too.
Scoring goes through `Detector`, so a clip served gets the numbers `metadg score` writes for it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from metadg.config import ConfigError, build_experiment
from metadg.engine.checkpoint import checkpoint_of, read_checkpoint

#: a local backbone folder under this size travels inside the model; a bigger one is referenced by path
BUNDLE_LIMIT_BYTES = 50 * 1024 * 1024
#: what `predict` takes beside the frame (MLflow `params`), with their defaults
PARAM_DEFAULTS: dict[str, tuple[str, Any]] = {
    "window_s": ("double", None), "overlap": ("double", None), "aggregate": ("string", "mean"),
    "threshold": ("double", None), "prior": ("double", None), "c_miss": ("double", 1.0), "c_fa": ("double", 1.0),
}
EXTRA_COLUMNS = ["operating_point", "error"]


# ---------------------------------------------------------------------------------------------- serving side

class DetectorModel(mlflow.pyfunc.PythonModel):
    """Scores a frame of audio (a `path` or an `audio` column) with the bundled run's Detector."""

    def load_context(self, context: Any) -> None:
        """Load the Detector from the bundled checkpoint (pointing its config at the backbone folder if needed)."""
        from metadg.deploy.detector import Detector

        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        checkpoint = Path(context.artifacts["checkpoint"])
        deploy = json.loads(Path(context.artifacts["run"], "deploy.json").read_text(encoding="utf-8"))
        pretrained = context.artifacts.get("backbone") or deploy.get("pretrained")
        if pretrained:  # meta.json names the training machine's path: a copy points at this one
            self._tmp = tempfile.TemporaryDirectory(prefix="metadg-detector-")
            checkpoint = _repointed(checkpoint, Path(self._tmp.name) / "checkpoint", str(pretrained))
        self.detector = Detector(checkpoint, device=deploy.get("device", "cpu"))
        header, probe = self.detector.table(np.zeros((1, self.detector.task.num_classes)))
        self.columns, self.numeric = output_columns(header, probe[0])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One output row per input row: the task's columns, the decision rule in words, and an error (or '')."""
        from metadg.deploy.detector import Windows

        params = {**{k: v for k, (_, v) in PARAM_DEFAULTS.items()}, **(params or {})}
        try:
            windows = Windows(_opt_float(params["window_s"]), _opt_float(params["overlap"]), str(params["aggregate"]))
            requested = requested_operating_point(params)
            rule = self.detector.operating_point(requested)
        except ConfigError as exc:  # a bad parameter is the caller's mistake: HTTP 400, not 500
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        waves, errors = read_inputs(frame)
        good = [i for i in range(len(waves)) if i not in errors]
        rows: list[list[str]] = []
        kept: list[int] = []
        if good:
            scored = self.detector.score([waves[i] for i in good], windows)
            errors.update({good[j]: msg for j, msg in scored.errors.items()})  # too short, non-finite output
            kept = [j for j in range(len(good)) if good[j] not in errors]
            if kept:
                _, rows = self.detector.table(scored.logits[kept], requested)
        table = {good[j]: row for j, row in zip(kept, rows)}
        out = []
        for i in range(len(waves)):
            row = table.get(i)
            # An error row: NaN numbers and empty text, so each column keeps one type.
            cells = row or [""] * len(self.columns)
            values = [_cell(v, num) for v, num in zip(cells, self.numeric)]
            out.append([*values, rule, errors.get(i, "")])
        return pd.DataFrame(out, columns=[*self.columns, *EXTRA_COLUMNS])


def _opt_float(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def requested_operating_point(params: dict[str, Any]) -> dict[str, float] | None:
    """{threshold} or {prior, c_miss, c_fa} from predict params, None for the run's default rule."""
    threshold, prior = _opt_float(params.get("threshold")), _opt_float(params.get("prior"))
    if threshold is not None and prior is not None:
        raise ConfigError("give `threshold` or `prior` (with c_miss, c_fa), not both")
    if threshold is not None:
        return {"threshold": threshold}
    if prior is not None:
        return {"prior": prior, "c_miss": float(params.get("c_miss", 1.0)), "c_fa": float(params.get("c_fa", 1.0))}
    return None


def read_inputs(frame: pd.DataFrame) -> tuple[list[np.ndarray], dict[int, str]]:
    """A 16 kHz wave per row (from `path`, else `audio`) and {row: error} for rows that give none."""
    from metadg.tasks.audio.loading import AudioError, load_audio

    if "path" not in frame.columns and "audio" not in frame.columns:
        raise MlflowException("the input needs a `path` column (audio files on the serving host) or an `audio` "
                              f"column (16 kHz float samples); got {list(frame.columns)}", error_code=INVALID_PARAMETER_VALUE)
    waves: list[np.ndarray] = []
    errors: dict[int, str] = {}
    for i, row in enumerate(frame.to_dict("records")):
        path, audio = row.get("path"), row.get("audio")
        try:
            if isinstance(path, str) and path:
                waves.append(load_audio(path))
            elif audio is not None and not (np.isscalar(audio) and pd.isna(audio)):
                waves.append(checked_wave(audio))
            else:
                raise AudioError("row has neither a `path` nor `audio` samples", "no input")
        except AudioError as exc:  # one bad row must not lose the others' scores
            waves.append(np.zeros(0, dtype=np.float32))
            errors[i] = str(exc)
    return waves, errors


def checked_wave(audio: Any) -> np.ndarray:
    """Samples as mono float32, refused (AudioError) like a file would be: empty, non-finite or silent."""
    from metadg.tasks.audio.loading import AudioError

    try:
        wave = np.asarray(audio, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"audio: not a list of numbers: {exc}", "unreadable audio") from None
    if wave.size == 0:
        raise AudioError("audio: empty audio (no samples)", "empty audio")
    if not np.isfinite(wave).all():
        raise AudioError("audio: NaN or infinite samples", "non-finite samples")
    if not wave.any():
        raise AudioError("audio: silent (every sample is zero)", "silent audio")
    return np.ascontiguousarray(wave)


def output_columns(header: list[str], probe: list[str]) -> tuple[list[str], list[bool]]:
    """The task's columns and which of them are numbers (a probe row's cell that is '' or parses as float)."""
    def numeric(cell: str) -> bool:
        try:
            float(cell or "nan")
            return True
        except ValueError:
            return False

    return list(header), [numeric(c) for c in probe]


def _cell(value: str, numeric: bool) -> Any:
    if not numeric:
        return value
    return float(value) if value != "" else float("nan")


def _repointed(checkpoint: Path, dest: Path, pretrained: str) -> Path:
    """A copy of `checkpoint` whose config loads the backbone from `pretrained` (the tensors are untouched)."""
    shutil.copytree(checkpoint, dest)
    meta_path = dest / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["config"]["model"]["backbone"]["pretrained"] = pretrained
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")
    return dest


# ---------------------------------------------------------------------------------------------- logging side

def backbone_plan(pretrained: str | None, limit: int = BUNDLE_LIMIT_BYTES) -> tuple[Path | None, bool, str | None]:
    """(absolute backbone folder or None, bundle it?, what the model card says): bundled under `limit` bytes."""
    if not pretrained:
        return None, False, None
    folder = Path(pretrained).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.backbone.pretrained: {folder} is not a Hugging Face checkpoint folder "
                                "here (a relative path is read from the current folder); log from where the run trained")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    mb = size / 2**20
    if size < limit:
        return folder, True, f"the backbone folder ({mb:.1f} MB, from {folder}) is bundled in the model"
    return folder, False, (f"the backbone folder is NOT bundled ({mb:.0f} MB, over {limit / 2**20:.0f} MB): the "
                           f"served model loads it from {folder}, which must exist on the serving host")


def signature(header: list[str], numeric: list[bool]) -> Any:
    """Input `path` or `audio` (optional each), the predict params with defaults, and the task's output columns."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(DataType.string, "path", required=False),
                     ColSpec(Array(DataType.double), "audio", required=False)])
    outputs = Schema([ColSpec(DataType.double if num else DataType.string, name, required=False)
                      for name, num in zip(header, numeric)] + [ColSpec(DataType.string, c) for c in EXTRA_COLUMNS])
    params = ParamSchema([ParamSpec(k, dtype, default) for k, (dtype, default) in PARAM_DEFAULTS.items()])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def input_example(seconds: float = 0.5) -> pd.DataFrame:
    """One row of `audio`: a quiet tone (files named by `path` would not exist where the model is served)."""
    t = np.arange(int(seconds * 16000)) / 16000
    return pd.DataFrame({"audio": [(0.1 * np.sin(2 * np.pi * 220.0 * t)).round(5).tolist()]})


@contextmanager
def using_uri(uri: str | None) -> Iterator[None]:
    """MLflow's fluent API pointed at `uri` inside the block only (None: whatever is configured)."""
    if uri is None:
        yield
        return
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri  # restores the caller's URI afterwards

    with _use_tracking_uri(uri):
        yield


@contextmanager
def _quiet_pickle_warning() -> Iterator[None]:
    """Silence MLflow's CloudPickle warning (DetectorModel pickles by reference) and its artifact progress bars."""
    def drop(record: logging.LogRecord) -> bool:
        return "CloudPickle" not in record.getMessage()

    logger = logging.getLogger("mlflow.pyfunc")
    logger.addFilter(drop)
    # MLflow's example check downloads the model's artifacts with a progress bar per run; in a
    # benchmark's output that is two lines of clutter for every cell.
    bar, os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"), "false"
    try:
        yield
    finally:
        logger.removeFilter(drop)
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _requirements() -> list[str]:
    # Written down, not inferred: inference loads the model in a subprocess, and serving uses
    # `--env-manager local` (this environment), so these only document what it ran with.
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("metadg", "mlflow", "torch", "transformers", "peft", "numpy", "pandas", "soundfile", "soxr", "safetensors"):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pass
    return pins


def log_detector(run_dir: str | Path, *, run_id: str | None = None, tracking_uri: str | None = None,
                 artifact_path: str = "detector", registered_name: str | None = None) -> Any:
    """Log `run_dir`'s detector as a pyfunc model into MLflow run `run_id` (default: the active run); its ModelInfo."""
    from mlflow.models import Model
    from mlflow.tracking import MlflowClient

    from metadg.deploy.model_card import model_card

    checkpoint = checkpoint_of(run_dir)
    _, meta = read_checkpoint(checkpoint)  # refuses a damaged checkpoint before anything is logged
    exp = build_experiment(meta["config"], source=str(checkpoint / "meta.json"))
    task = exp.task.build(seed=exp.seed)
    header, probe = task.score_table(np.zeros((1, task.num_classes)), meta)
    header, numeric = output_columns(header, probe[0])
    backbone = (meta["config"].get("model", {}).get("backbone") or {}).get("pretrained")
    folder, bundle, note = backbone_plan(backbone)
    run_folder = Path(run_dir) if (Path(run_dir) / "checkpoints").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="metadg-log-") as tmp, using_uri(tracking_uri):
        staged = Path(tmp) / "run"
        staged.mkdir()
        for name in ("config.yaml", "results.json"):
            if run_folder is not None and (run_folder / name).is_file():
                shutil.copy2(run_folder / name, staged / name)
        deploy = {"pretrained": None if bundle or folder is None else str(folder), "bundled_backbone": bundle,
                  "task": exp.task.name, "class_names": list(task.class_names), "device": "cpu"}
        (staged / "deploy.json").write_text(json.dumps(deploy, indent=2), encoding="utf-8")
        readme = Path(tmp) / "README.md"
        readme.write_text(model_card(run_dir, backbone_note=note), encoding="utf-8")
        artifacts = {"checkpoint": str(checkpoint), "run": str(staged)}
        if bundle and folder is not None:
            artifacts["backbone"] = str(folder)
        run_id = run_id or (mlflow.active_run().info.run_id if mlflow.active_run() else None)
        if run_id is None:
            raise ValueError("log_detector: give run_id or call it inside an active MLflow run")
        client = MlflowClient()
        # Created here, in the run's experiment: MLflow would put it in the default experiment when no run is active.
        logged = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=artifact_path,
                                            source_run_id=run_id, tags={"metadg.task": exp.task.name})
        try:
            with _quiet_pickle_warning():
                info = Model.log(
                    artifact_path=None, name=artifact_path, flavor=mlflow.pyfunc, run_id=run_id, model_id=logged.model_id,
                    python_model=DetectorModel(), artifacts=artifacts, signature=signature(header, numeric),
                    input_example=input_example(), pip_requirements=_requirements(),
                    metadata={"metadg": deploy},  # MLflow loads it once here to check that the example serves
                )
        except BaseException:  # not left PENDING: `register` looks for READY models only
            from mlflow.entities import LoggedModelStatus

            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        client.log_model_artifact(info.model_id, str(readme))  # the model card beside MLmodel
        client.log_artifact(run_id, str(readme), artifact_path)  # and in the run's own artifacts
        if registered_name:
            info.registered_model_version = mlflow.register_model(info.model_uri, registered_name).version
    return info


# ---------------------------------------------------------------------------------------------- serving

@contextmanager
def served(model_uri: str, tracking_uri: str | None = None, log_path: str | Path | None = None,
           timeout_s: float = 120.0, port: int | None = None) -> Iterator[str]:
    """`mlflow models serve --env-manager local` of `model_uri` on 127.0.0.1 until the block ends; yields its URL."""
    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    # This environment serves it; its bin folder on PATH is where MLflow finds uvicorn.
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-p", str(port), "-h", "127.0.0.1", "--workers", "1"]
    log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="metadg-serve-")) / "serve.log"
    with log_path.open("wb") as out:  # its own session: stopping signals the group, uvicorn's worker included
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(f"{url}/ping"):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {proc.returncode}: "
                                   f"{log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}/ping did not answer within {timeout_s:.0f} s; log: {log_path}")
            time.sleep(0.25)
        yield url
    finally:
        stop_group(proc)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM `proc`'s process group, SIGKILL what is left after `grace_s`; returns once the group is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace_s
        try:
            proc.wait(timeout=grace_s)
            while time.monotonic() < deadline:  # the worker may outlive the leader for a moment
                os.killpg(proc.pid, 0)
                time.sleep(0.1)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()

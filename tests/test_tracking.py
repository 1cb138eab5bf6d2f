"""Tracker journal, offline mode and `metadg upload`, against local sqlite stores (no server needed)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from metadg.cli import main
from metadg.config import TrackingConfig
from metadg.tracking import UID_TAG, Tracker, http_limits
from metadg.tracking_journal import JOURNAL_NAME, JournalError, read_journal
from metadg.tracking_upload import upload

from mlflow_server import free_port  # tests/mlflow_server.py, a test helper beside this file


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens there


def offline_tracker() -> Tracker:
    return Tracker(TrackingConfig(uri=dead_uri(), experiment="offline"))


def tracker_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def log_a_run(tracker: Tracker, run_dir: Path, parent: str | None = None, name: str = "cell") -> str | None:
    (run_dir / "scores").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "scores" / "all.txt").write_text("u1 0.5\n")
    run_id = tracker.start(name, params={"algorithm": {"name": "mldg"}, "seed": 0}, tags={"algorithm": "mldg"},
                           parent_run_id=parent, run_dir=run_dir)
    for step in (10, 20):
        tracker.log_metrics(run_id, {"train/loss": 1.0 / step, "bad": float("nan")}, step)
    tracker.log_metrics(run_id, {"eval/all/eer": 0.25, "eval/avg_eer": 0.25})
    tracker.set_tags(run_id, {"trial_state": "COMPLETE"})
    tracker.log_artifact(run_id, run_dir / "config.yaml")
    tracker.log_artifact(run_id, run_dir / "scores", "scores")
    tracker.end(run_id, "FINISHED")
    return run_id


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs_by_name(uri: str, experiment: str = "offline") -> dict[str, object]:
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def test_journal_ignores_a_truncated_last_line_and_names_a_bad_middle_line(tmp_path):
    tracker = offline_tracker()
    log_a_run(tracker, tmp_path / "run")
    journal = tmp_path / "run" / JOURNAL_NAME
    lines = journal.read_text().splitlines(keepends=True)
    assert [json.loads(line)["op"] for line in lines][:3] == ["start", "params", "metrics"]
    journal.write_text("".join(lines) + '{"v": 1, "run": "x", "op": "met')  # a crash mid-write
    (run,) = read_journal(journal)
    assert [r["op"] for r in run.records] == [json.loads(line)["op"] for line in lines]
    journal.write_text(lines[0] + "garbage\n" + "".join(lines[1:]))
    with pytest.raises(JournalError, match=rf"{JOURNAL_NAME}:2: not a journal record"):
        read_journal(journal)
    assert main(["upload", str(journal)]) == 1


def test_unreachable_server_warns_once_and_journals_everything(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    tracker = offline_tracker()
    assert tracker.enabled and not tracker.online
    parent = tracker.start("bench", params={"cells": 2})
    first = log_a_run(tracker, tmp_path / "bench" / "a", parent, "a")
    second = log_a_run(tracker, tmp_path / "bench" / "b", parent, "b")
    tracker.log_artifact(parent, tmp_path / "bench" / "a" / "config.yaml")
    tracker.end(parent)
    warnings = tracker_warnings(caplog)
    assert len(warnings) == 1 and "metadg upload" in warnings[0]
    assert len({parent, first, second}) == 3

    (a,) = read_journal(tmp_path / "bench" / "a" / JOURNAL_NAME)
    assert a.uid == first and not any(r["synced"] for r in a.records)
    metrics = [r for r in a.records if r["op"] == "metrics"]
    assert [r["step"] for r in metrics] == [10, 20, 0]
    assert all("bad" not in r["metrics"] for r in metrics)  # NaN is not a metric value
    assert a.start["parent"] == parent and a.start["tags"][UID_TAG] == first
    assert (a.records[-1]["op"], a.records[-1]["status"]) == ("end", "FINISHED")
    # The parent had no folder: its journal went beside its first child's.
    (p,) = read_journal(tmp_path / "bench" / JOURNAL_NAME)
    assert p.uid == parent and [r["op"] for r in p.records] == ["start", "params", "artifact", "end"]


def test_a_run_without_folder_or_children_journals_to_the_fallback_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tracker = offline_tracker()
    run_id = tracker.start("lonely", params={"x": 1})
    tracker.end(run_id, "FAILED")
    (run,) = read_journal(tmp_path / "metadg-journal" / JOURNAL_NAME)
    assert run.uid == run_id and run.records[-1]["status"] == "FAILED"


def test_upload_replays_nested_runs_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    tracker = offline_tracker()
    parent = tracker.start("bench", params={"cells": 2})
    log_a_run(tracker, tmp_path / "bench" / "a", parent, "a")
    log_a_run(tracker, tmp_path / "bench" / "b", parent, "b")
    tracker.end(parent)
    target = f"sqlite:///{tmp_path}/up.db"

    report = upload([tmp_path / "bench"], target)
    assert (report.runs, report.created, report.skipped) == (3, 3, [])
    runs = runs_by_name(target)
    assert set(runs) == {"bench", "a", "b"}
    parent_id = runs["bench"].info.run_id
    client = client_for(target)
    for name in ("a", "b"):
        run = runs[name]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.info.status == "FINISHED"
        assert run.data.params["algorithm.name"] == "mldg" and run.data.params["seed"] == "0"
        assert run.data.tags["trial_state"] == "COMPLETE"
        assert run.data.metrics["eval/avg_eer"] == 0.25
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [10, 20]
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "scores"}

    again = upload([tmp_path / "bench"], target)
    assert (again.created, again.up_to_date, again.metrics) == (0, 3, 0)
    # An upload that crashed before writing its marker is replayed without duplicates.
    journal = tmp_path / "bench" / "a" / JOURNAL_NAME
    lines = journal.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["op"] == "uploaded"
    journal.write_text("".join(lines[:-1]))
    replay = upload([journal], target)
    assert (replay.created, replay.metrics, replay.params) == (0, 0, 0)
    assert len(runs_by_name(target)) == 3
    assert [m.step for m in client.get_metric_history(runs["a"].info.run_id, "train/loss")] == [10, 20]


def test_a_moved_run_folder_still_uploads_its_artifacts_and_a_missing_one_is_reported(tmp_path, capsys):
    tracker = offline_tracker()
    log_a_run(tracker, tmp_path / "old" / "run")
    shutil.move(tmp_path / "old", tmp_path / "new")
    (tmp_path / "new" / "run" / "config.yaml").unlink()
    target = f"sqlite:///{tmp_path}/up.db"
    assert main(["upload", str(tmp_path / "new"), "--uri", target]) == 1  # something was skipped
    out = capsys.readouterr().out
    assert "1 created" in out and "config.yaml no longer exists" in out
    run = runs_by_name(target)["cell"]
    assert {a.path for a in client_for(target).list_artifacts(run.info.run_id)} == {"scores"}


def test_upload_to_an_unreachable_server_fails_fast_and_keeps_the_journal(tmp_path, capsys):
    tracker = offline_tracker()
    log_a_run(tracker, tmp_path / "run")
    before = (tmp_path / "run" / JOURNAL_NAME).read_text()
    assert main(["upload", str(tmp_path / "run"), "--uri", dead_uri()]) == 1
    assert "nothing is lost" in capsys.readouterr().err
    assert (tmp_path / "run" / JOURNAL_NAME).read_text() == before
    assert main(["upload", str(tmp_path / "nowhere")]) == 1


def test_online_sqlite_runs_are_journaled_as_synced(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(TrackingConfig(uri=uri, experiment="offline"))
    run_id = log_a_run(tracker, tmp_path / "run")
    (run,) = read_journal(tmp_path / "run" / JOURNAL_NAME)
    assert run.start["run_id"] == run_id and all(r["synced"] for r in run.records)
    assert client_for(uri).get_run(run_id).data.tags[UID_TAG] == run.uid
    report = upload([tmp_path / "run"])
    assert (report.created, report.up_to_date) == (0, 1)
    with pytest.raises(FileNotFoundError, match="no such artifact"):
        tracker.log_artifact(run_id, tmp_path / "missing.txt")
    assert tracker.online  # a caller's mistake is not a backend failure


def test_http_limits_apply_inside_the_block_only(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    with pytest.raises(RuntimeError):
        with http_limits(TrackingConfig(http_timeout_s=3, http_retries=0)):
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
            raise RuntimeError
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_disabled_tracker_records_nothing(tmp_path):
    tracker = Tracker(TrackingConfig(enabled=False))
    assert tracker.start("x", run_dir=tmp_path) is None
    tracker.log_metrics(None, {"a": 1.0})
    assert not (tmp_path / JOURNAL_NAME).exists()

"""Tiny runs logged to a real `mlflow server` on 127.0.0.1, checked through its REST API; server down and killed."""

from __future__ import annotations

import json
import logging
import signal
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from metadg.cli import main
from metadg.config import build_experiment
from metadg.tracking_journal import JOURNAL_NAME, read_journal
from metadg.engine.trainer import Trainer

from mlflow_server import LocalMlflowServer, free_port  # tests/mlflow_server.py, a test helper beside this file


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server per module (startup takes seconds); stopped by its PID whatever happens."""
    root = tmp_path_factory.mktemp("mlflow-server")
    srv = LocalMlflowServer(f"sqlite:///{root}/server.db", root / "artifacts", root / "server.log")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def get(server: LocalMlflowServer, endpoint: str, **query: str) -> dict:
    url = f"{server.url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def post(server: LocalMlflowServer, endpoint: str, body: dict) -> dict:
    req = urllib.request.Request(f"{server.url}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def runs_named(server: LocalMlflowServer, experiment: str, name: str) -> list[dict]:
    exp_id = get(server, "experiments/get-by-name", experiment_name=experiment)["experiment"]["experiment_id"]
    found = post(server, "runs/search", {"experiment_ids": [exp_id], "filter": f"attributes.run_name = '{name}'"})
    return found.get("runs", [])


def history(server: LocalMlflowServer, run_id: str, key: str) -> list[tuple[int, int, float]]:
    points = get(server, "metrics/get-history", run_id=run_id, metric_key=key).get("metrics", [])
    return sorted((int(m.get("step", 0)), int(m["timestamp"]), m["value"]) for m in points)


def artifacts(server: LocalMlflowServer, run_id: str, path: str = "") -> set[str]:
    listing = get(server, "artifacts/list", run_id=run_id, path=path)
    return {f["path"] for f in listing.get("files", [])}


def journaled_metrics(run_dir: Path) -> dict[str, list[tuple[int, int, float]]]:
    (run,) = read_journal(run_dir / JOURNAL_NAME)
    out: dict[str, list[tuple[int, int, float]]] = {}
    for rec in run.records:
        if rec["op"] == "metrics":
            for key, value in rec["metrics"].items():
                out.setdefault(key, []).append((rec["step"], rec["time"], value))
    return {k: sorted(v) for k, v in out.items()}


def assert_run_complete_on_server(server: LocalMlflowServer, run: dict, run_dir: Path) -> None:
    """Everything the journal holds is on the server, once: params, tags, every metric point, artifacts, status."""
    info, data = run["info"], run["data"]
    params = {p["key"]: p["value"] for p in data.get("params", [])}
    tags = {t["key"]: t["value"] for t in data.get("tags", [])}
    assert info["status"] == "FINISHED"
    assert (params["algorithm.name"], params["adapter.name"], params["task.name"], params["seed"]) == (
        "erm", "lora", "spoof_detection", "0")
    assert int(params["trainable_params"]) > 0
    assert (tags["algorithm"], tags["adapter"], tags["task"]) == ("erm", "lora", "spoof_detection")
    journal = journaled_metrics(run_dir)
    assert {"eval/all/eer", "eval/avg_eer", "dev/eer", "train/loss", "best_dev/eer"} <= set(journal)
    for key, points in journal.items():
        assert history(server, info["run_id"], key) == points, key
    assert [step for step, _, _ in journal["dev/eer"]] == [3, 6]
    assert {"config.yaml", "scores", "checkpoint", "det.png"} <= artifacts(server, info["run_id"])
    assert "checkpoint/meta.json" in artifacts(server, info["run_id"], "checkpoint")


def tracked(tiny_config: dict, uri: str, experiment: str) -> dict:
    tiny_config["tracking"] = {"enabled": True, "uri": uri, "experiment": experiment}
    return tiny_config


def test_a_run_logs_params_metrics_tags_and_artifacts_to_the_server(server, tiny_config):
    result = Trainer(build_experiment(tracked(tiny_config, server.url, "online"))).fit()
    (run,) = runs_named(server, "online", "tiny")
    assert run["info"]["run_id"] == result.run_id
    assert_run_complete_on_server(server, run, Path(result.run_dir))
    (journal,) = read_journal(Path(result.run_dir) / JOURNAL_NAME)
    assert all(r["synced"] for r in journal.records)


def test_unreachable_server_loses_nothing_and_upload_sends_it_later(server, tiny_config, caplog):
    caplog.set_level(logging.WARNING)
    result = Trainer(build_experiment(tracked(tiny_config, f"http://127.0.0.1:{free_port()}", "later"))).fit()
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    run_dir = Path(result.run_dir)
    assert "eval/avg_eer" in journaled_metrics(run_dir)

    assert main(["upload", str(run_dir), "--uri", server.url]) == 0
    (run,) = runs_named(server, "later", "tiny")
    assert_run_complete_on_server(server, run, run_dir)
    assert main(["upload", str(run_dir.parent), "--uri", server.url]) == 0  # a folder of run folders, again
    (again,) = runs_named(server, "later", "tiny")
    assert_run_complete_on_server(server, again, run_dir)


def test_server_killed_mid_run_loses_no_metrics_after_upload(server, tiny_config, caplog):
    caplog.set_level(logging.WARNING)

    def kill_server(step: int, dev: dict[str, float]) -> None:
        if step == 3:
            server.stop(signal.SIGKILL)

    try:
        result = Trainer(build_experiment(tracked(tiny_config, server.url, "killed")), on_eval=kill_server).fit()
    finally:
        if server.proc is None:
            server.start()  # same port and store: the server came back
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    run_dir = Path(result.run_dir)
    (before,) = runs_named(server, "killed", "tiny")
    assert before["info"]["status"] == "RUNNING"  # the end of the run never reached it
    assert [s for s, _, _ in history(server, result.run_id, "dev/eer")] == [3]

    assert main(["upload", str(run_dir)]) == 0  # to the server the run was started with
    (after,) = runs_named(server, "killed", "tiny")
    assert after["info"]["run_id"] == result.run_id
    assert_run_complete_on_server(server, after, run_dir)

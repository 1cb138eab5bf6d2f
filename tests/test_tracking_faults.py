"""Every tracking fault goes to the journal: corrupt stores, wrong-shaped servers, damaged journals, lost stores."""

from __future__ import annotations

import http.server
import json
import logging
import threading

from metadg.config import TrackingConfig
from metadg.tracking import Tracker
from metadg.tracking_journal import JOURNAL_NAME, read_journal

from mlflow_server import free_port
from test_tracking import client_for, log_a_run, runs_by_name


def test_a_corrupt_sqlite_store_turns_the_tracker_offline_and_everything_is_journaled(tmp_path, caplog):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"this is not a database" * 100)
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{db}", experiment="offline"))
    assert tracker.enabled and not tracker.online
    run_id = log_a_run(tracker, tmp_path / "run")
    (run,) = read_journal(tmp_path / "run" / JOURNAL_NAME)
    assert run.uid == run_id and [r["op"] for r in run.records][-1] == "end"
    assert not any(r["synced"] for r in run.records)
    assert sum("metadg upload" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING) == 1


class _WrongShape(http.server.BaseHTTPRequestHandler):
    """Answers every MLflow REST call with 200 and JSON of the wrong shape."""

    def _answer(self) -> None:
        body = json.dumps({"unexpected": [1, 2, 3]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args) -> None:
        pass


def test_a_server_answering_wrong_shaped_json_is_offline_not_a_crash(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _WrongShape)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        tracker = Tracker(TrackingConfig(uri=f"http://127.0.0.1:{server.server_port}", experiment="offline",
                                         http_timeout_s=2, http_retries=0))
        run_id = log_a_run(tracker, tmp_path / "run")
    finally:
        server.shutdown()
    assert not tracker.online and tracker.offline_reason
    (run,) = read_journal(tmp_path / "run" / JOURNAL_NAME)
    assert run.uid == run_id and {"params", "metrics", "tags", "artifact", "end"} <= {r["op"] for r in run.records}


def test_a_damaged_journal_does_not_block_resuming(tmp_path, caplog):
    tracker = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db", experiment="offline"))
    run_id = tracker.start("run", run_dir=tmp_path / "run")
    journal = tmp_path / "run" / JOURNAL_NAME
    journal.write_text(journal.read_text() + "{not json}\n" + journal.read_text())  # a bad line in the middle
    again = Tracker(TrackingConfig(uri=f"sqlite:///{tmp_path}/m.db", experiment="offline"))
    assert again.reopen(run_id, run_dir=tmp_path / "run") == run_id
    again.log_metrics(run_id, {"x": 1.0}, 3)
    assert client_for(f"sqlite:///{tmp_path}/m.db").get_run(run_id).data.metrics["x"] == 1.0
    assert any("resuming without it" in r.getMessage() for r in caplog.records)


def test_a_run_whose_store_was_deleted_is_recreated_with_every_record(tmp_path):
    import shutil
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path}/store.db"
    log_a_run(Tracker(TrackingConfig(uri=uri, experiment="offline")), tmp_path / "run")  # online: all synced
    (tmp_path / "store.db").unlink()
    shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)
    # A fresh process, as a later `metadg upload` is (this one's store connections outlive the file).
    done = subprocess.run([sys.executable, "-m", "metadg", "upload", str(tmp_path / "run"), "--uri", uri],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (run,) = runs_by_name(uri).values()
    assert run.data.params["algorithm.name"] == "mldg" and run.data.metrics["eval/avg_eer"] == 0.25
    assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == "COMPLETE"

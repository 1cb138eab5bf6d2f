"""The MLflow model of a trained run: logged, loaded back, registered under an alias, served over HTTP.

Offline: sqlite tracking stores in tmp folders and `mlflow models serve` on 127.0.0.1. Every score is
checked against what `metadg score` writes for the same files.
"""

from __future__ import annotations

import csv
import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from hostile import tone
from metadg.config import TrackingConfig
from metadg.deploy.model_card import model_card
from metadg.deploy.pyfunc import _repointed, backbone_plan, served, using_uri
from metadg.deploy.register import find_mlflow_run, register
from metadg.engine.checkpoint import read_checkpoint
from metadg.tasks.audio.loading import load_audio
from metadg.tasks.audio.score_files import score_files
from metadg.tracking import JOURNAL_NAME, Tracker, read_journal
from metadg.tracking.upload import upload

from mlflow_server import free_port  # tests/mlflow_server.py, a test helper beside this file

SR = 16000
NAME = "spoof-detector"


def sqlite_uri(folder: Path) -> str:
    # Experiments made here name their artifact folder: a sqlite store's default is ./mlruns in the current folder.
    return f"sqlite:///{folder / 'mlflow.db'}"


@pytest.fixture(scope="module")
def deployed(run_dir, tmp_path_factory):
    """A copy of the trained run (tracking off) registered as NAME@champion in a fresh sqlite store, two clips."""
    root = tmp_path_factory.mktemp("deploy")
    run = root / "run"
    shutil.copytree(run_dir, run)  # register journals the MLflow run it makes into the folder: not the shared one
    clips = root / "clips"
    clips.mkdir()
    sf.write(clips / "tone.wav", tone(1.0, hz=300.0), SR)
    sf.write(clips / "noise.flac", (0.1 * np.random.default_rng(1).standard_normal(int(1.5 * SR))).astype(np.float32), SR)
    (clips / "broken.wav").write_bytes(b"RIFF not really a wav")
    uri = sqlite_uri(root)
    number = register(run, NAME, alias="champion", tracking_uri=uri)
    version = mlflow.tracking.MlflowClient(uri).get_model_version(NAME, number)
    expected = root / "scores.csv"
    assert score_files(run, [clips / "tone.wav", clips / "noise.flac"], expected) == (2, 0)
    with expected.open() as fh:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    return {"root": root, "run": run, "uri": uri, "version": version, "clips": clips, "expected": rows}


@pytest.fixture(scope="module")
def model(deployed):
    """NAME@champion loaded back from the registry."""
    with using_uri(deployed["uri"]):
        return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")


def assert_like_metadg_score(frame: pd.DataFrame, names: list[str], expected: dict[str, dict[str, str]]) -> None:
    for (_, got), name in zip(frame.iterrows(), names):
        want = expected[name]
        assert got["error"] == "", got["error"]
        assert got["score"] == pytest.approx(float(want["score"]), abs=1e-5)
        assert got["llr"] == pytest.approx(float(want["llr"]), abs=1e-5)
        assert got["decision"] == want["decision"]


def test_logged_model_scores_files_and_arrays_as_metadg_score(deployed, model):
    clips, names = deployed["clips"], ["tone.wav", "noise.flac"]
    by_path = model.predict(pd.DataFrame({"path": [str(clips / n) for n in names]}))
    assert list(by_path.columns) == ["score", "llr", "decision", "operating_point", "error"]
    assert_like_metadg_score(by_path, names, deployed["expected"])
    assert set(by_path["operating_point"]) == {by_path["operating_point"][0]}
    assert "EER threshold" in by_path["operating_point"][0]
    arrays = model.predict(pd.DataFrame({"audio": [load_audio(clips / n).tolist() for n in names]}))
    assert_like_metadg_score(arrays, names, deployed["expected"])


def test_a_bad_row_gets_an_error_and_the_others_still_score(deployed, model):
    clips = deployed["clips"]
    paths = [str(clips / "tone.wav"), str(clips / "broken.wav"), str(clips / "missing.wav"), str(clips / "noise.flac")]
    out = model.predict(pd.DataFrame({"path": paths}))
    assert_like_metadg_score(out.iloc[[0, 3]], ["tone.wav", "noise.flac"], deployed["expected"])
    assert "unreadable audio" in out["error"][1] and "file not found" in out["error"][2]
    assert np.isnan(out["score"][1]) and out["decision"][1] == ""
    silent = model.predict(pd.DataFrame({"audio": [np.zeros(SR).tolist(), load_audio(clips / "tone.wav").tolist()]}))
    assert "silent" in silent["error"][0] and silent["error"][1] == ""


def test_a_request_of_only_bad_rows_answers_every_row(model):
    out = model.predict(pd.DataFrame({"path": ["/no/such.wav"], "audio": [None]}))
    assert len(out) == 1 and "file not found" in out["error"][0] and np.isnan(out["score"][0])
    short = model.predict(pd.DataFrame({"audio": [tone(0.01).tolist()]}))  # 160 samples: under what the model takes
    assert short["error"][0] != "" and np.isnan(short["score"][0])


def test_params_move_the_decision(deployed, model):
    frame = pd.DataFrame({"path": [str(deployed["clips"] / "tone.wav")]})
    score = model.predict(frame)["score"][0]
    below = model.predict(frame, params={"threshold": score - 1.0})
    above = model.predict(frame, params={"threshold": score + 1.0})
    assert below["decision"][0] == "bonafide" and above["decision"][0] == "spoof"
    assert below["score"][0] == pytest.approx(score)  # the rule moves, the score does not
    assert f"score > {score - 1.0:g} (given threshold)" == below["operating_point"][0]
    bayes = model.predict(frame, params={"prior": 0.05, "c_fa": 10.0})
    assert "Bayes threshold at P_spoof 0.05" in bayes["operating_point"][0]
    with pytest.raises(mlflow.exceptions.MlflowException, match="not both"):
        model.predict(frame, params={"threshold": 0.0, "prior": 0.5})
    with pytest.raises(mlflow.exceptions.MlflowException, match="--window"):
        model.predict(frame, params={"window_s": 0.001})


def test_register_names_the_alias_and_a_second_call_adds_no_twin(deployed):
    version = deployed["version"]
    assert version.aliases == ["champion"] and version.source.startswith("models:/")
    # The run was trained with tracking off: register made it an MLflow run and journaled it.
    (journaled,) = read_journal(deployed["run"] / JOURNAL_NAME)
    assert journaled.start["run_id"] == version.run_id == find_mlflow_run(deployed["run"], deployed["uri"])
    # Named by its checkpoint folder this time, as `metadg register RUN/checkpoints/best` may.
    again = register(deployed["run"] / "checkpoints" / "best", NAME, alias="champion", tracking_uri=deployed["uri"])
    assert again == str(version.version)
    client = mlflow.tracking.MlflowClient(deployed["uri"])
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    run = client.get_run(version.run_id)
    assert run.data.metrics["dev/eer"] == pytest.approx(json.loads((deployed["run"] / "results.json").read_text())["dev"]["eer"])
    model = client.get_logged_model(version.source.removeprefix("models:/"))
    assert {"README.md", "MLmodel"} <= {f.path for f in client.list_logged_model_artifacts(model.model_id)}


def test_model_card_states_the_runs_metrics_and_limits(deployed):
    card = model_card(deployed["run"])
    results = json.loads((deployed["run"] / "results.json").read_text())
    assert card.startswith("# trained: a metadg `spoof_detection` model")
    assert f"| eer | {results['dev']['eer']:.4g} |" in card
    assert f"trainable parameters: {results['trainable_params']:,}" in card
    assert "`synthetic` split `train`" in card and "concat" in card  # the training corpus and a domain
    assert "the dev set's EER threshold" in card and "calibration fitted on the dev set" in card
    assert "scores are for the training conditions" in card.lower()
    client = mlflow.tracking.MlflowClient(deployed["uri"])
    logged = Path(client.download_artifacts(deployed["version"].run_id, "detector/README.md", str(deployed["root"])))
    assert logged.read_text() == card


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def test_served_model_answers_like_metadg_score(deployed):
    # `served` runs `mlflow models serve -m models:/NAME@champion --env-manager local -p <free port> -h 127.0.0.1`
    # in its own process group, waits (≤ 120 s) for /ping, and stops the group however the block ends.
    clips, names = deployed["clips"], ["tone.wav", "noise.flac"]
    one = {"columns": ["path"], "data": [[str(clips / "tone.wav")]]}
    with served(f"models:/{NAME}@champion", deployed["uri"], deployed["root"] / "serve.log", timeout_s=120) as url:
        got = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["path"], "data": [[str(clips / n)] for n in names]}})
        assert_like_metadg_score(pd.DataFrame(got["predictions"]), names, deployed["expected"])
        flipped = _post(f"{url}/invocations", {"dataframe_split": one, "params": {"threshold": -1e6}})
        assert flipped["predictions"][0]["decision"] == "bonafide"
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(f"{url}/invocations", {"dataframe_split": one, "params": {"threshold": 0.0, "prior": 0.5}})
        assert refused.value.code == 400
    with pytest.raises(OSError):  # stopped: nothing answers there any more
        urllib.request.urlopen(f"{url}/ping", timeout=2)


def test_register_logs_into_the_mlflow_run_that_results_json_names(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    uri = sqlite_uri(tmp_path)
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.create_experiment("tracked", artifact_location=(tmp_path / "artifacts").as_uri())
    trained = client.create_run(experiment).info.run_id  # as an online training run left it
    results = json.loads((run / "results.json").read_text())
    (run / "results.json").write_text(json.dumps({**results, "run_id": trained}))
    number = register(run, "tracked-detector", tracking_uri=uri)
    assert client.get_model_version("tracked-detector", number).run_id == trained
    assert not (run / JOURNAL_NAME).exists()  # nothing made, nothing to journal


def test_a_model_logged_offline_is_sent_by_upload(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    tracker = Tracker(TrackingConfig(uri=dead, experiment="offline", http_retries=0, http_timeout_s=2))
    run_id = tracker.start("offline-run", run_dir=run)
    tracker.log_model(run_id, run)
    tracker.end(run_id)
    (journaled,) = read_journal(run / JOURNAL_NAME)
    assert [r["op"] for r in journaled.records if not r["synced"]] == ["start", "model", "end"]
    uri = sqlite_uri(tmp_path)
    report = upload([run], uri=uri)
    assert report.artifacts == 1 and not report.skipped
    server_id = find_mlflow_run(run, uri)
    client = mlflow.tracking.MlflowClient(uri)
    (model,) = client.search_logged_models([client.get_run(server_id).info.experiment_id],
                                           filter_string=f"source_run_id = '{server_id}'")
    assert model.name == "detector"


def test_a_small_backbone_folder_is_bundled_and_a_big_one_referenced(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"\0" * 1000)
    folder, bundled, note = backbone_plan(str(hf))
    assert folder == hf.resolve() and bundled and "bundled" in note
    folder, bundled, note = backbone_plan(str(hf), limit=500)
    assert not bundled and "NOT bundled" in note and str(hf.resolve()) in note
    assert backbone_plan(None) == (None, False, None)
    with pytest.raises(FileNotFoundError, match="not a Hugging Face checkpoint folder"):
        backbone_plan(str(tmp_path / "nowhere"))


def test_a_repointed_checkpoint_keeps_its_tensors(run_dir, tmp_path):
    moved = _repointed(run_dir / "checkpoints" / "best", tmp_path / "ckpt", "/models/xlsr")
    tensors, meta = read_checkpoint(moved)  # its checksum still holds: only the config changed
    original, old_meta = read_checkpoint(run_dir / "checkpoints" / "best")
    assert meta["config"]["model"]["backbone"]["pretrained"] == "/models/xlsr"
    assert old_meta["config"]["model"]["backbone"]["pretrained"] is None
    assert all(bool((tensors[k] == original[k]).all()) for k in original)


def test_a_multi_class_run_serves_its_own_columns(tmp_path):
    from metadg.config import build_experiment
    from metadg.deploy.pyfunc import log_detector
    from metadg.engine.trainer import Trainer

    rows = ["path,label,device"]
    for c in range(3):
        for dev in ("d0", "d1"):
            for k in range(2):
                path = tmp_path / "audio" / f"c{c}_{dev}_{k}.wav"
                path.parent.mkdir(exist_ok=True)
                sf.write(path, tone(0.2, hz=300.0 + 200 * c + 20 * k), SR)
                rows.append(f"audio/{path.name},c{c},{dev}")
    (tmp_path / "all.csv").write_text("\n".join(rows) + "\n")
    spec = {"name": "list", "path": str(tmp_path / "all.csv")}
    run = Path(Trainer(build_experiment({
        "name": "three", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "audio_classification", "train": spec, "dev": spec, "crop_samples": 1600,
                 "classes": ["c0", "c1", "c2"]},
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4}, "algorithm": {"name": "erm"},
        "train": {"steps": 1, "eval_every": 1, "batch_per_domain": 3, "progress": False},
        "tracking": {"enabled": False}})).fit().run_dir)
    uri = sqlite_uri(tmp_path)
    client = mlflow.tracking.MlflowClient(uri)
    experiment = client.create_experiment("three", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    info = log_detector(run, run_id=run_id, tracking_uri=uri)
    with using_uri(uri):
        model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"path": [str(tmp_path / "audio" / "c1_d0_0.wav"), str(tmp_path / "gone.wav")]}))
    assert list(out.columns) == ["predicted", "p_c0", "p_c1", "p_c2", "operating_point", "error"]
    assert out["predicted"][0] in {"c0", "c1", "c2"} and out["operating_point"][0] == "the most probable class"
    assert out[["p_c0", "p_c1", "p_c2"]].iloc[0].sum() == pytest.approx(1.0, abs=1e-5)
    assert out["predicted"][1] == "" and "file not found" in out["error"][1]
    with pytest.raises(mlflow.exceptions.MlflowException, match="most probable class"):
        model.predict(pd.DataFrame({"path": [str(tmp_path / "audio" / "c1_d0_0.wav")]}), params={"threshold": 0.0})
    assert "`audio_classification`" in model_card(run) and "c0" in model_card(run)


def test_the_register_command_prints_the_model_uri_to_serve(deployed, capsys):
    from hostile import cli

    status, out, err = cli(capsys, "register", str(deployed["run"]), "--name", NAME, "--alias", "champion",
                           "--uri", deployed["uri"])
    assert status == 0, err
    assert f"models:/{NAME}@champion" in out and "mlflow models serve" in out
    versions = mlflow.tracking.MlflowClient(deployed["uri"]).search_model_versions(f"name = '{NAME}'")
    assert [v.version for v in versions] == [deployed["version"].version]  # the same run: no new version

"""Optuna search: pruned and complete trials, MLflow child runs, best.yaml, crash recovery, workers, bad blocks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from metadg.cli import main
from metadg.config import ConfigError
from metadg.search import run_search
from metadg.search_space import load_search
from metadg.search_storage import open_storage

ROOT = Path(__file__).resolve().parents[1]
ASSET = str(ROOT / "benchmarks" / "assets" / "tiny-ssl")


@pytest.fixture
def search_config(tiny_config, tmp_path):
    """The tiny experiment on the pre-trained tiny encoder (so settings differ), plus a small search block."""
    tiny_config["model"]["backbone"] = {"name": "ssl", "pretrained": ASSET}
    tiny_config["train"].update({"steps": 4, "eval_every": 1})
    for split in (tiny_config["task"]["dev"], tiny_config["task"]["eval"]["all"]):
        split.update({"n_bonafide": 10, "n_per_attack": 5})
    tiny_config["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "search-test"}
    tiny_config["search"] = {
        "params": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 0.05, "log": True},
                   "seed": {"type": "categorical", "choices": [0, 1, 2]}},
        "sampler": "random",
        "pruner": {"name": "median", "n_startup_trials": 1},
        "n_trials": 4,
    }
    return tiny_config


def write(tmp_path: Path, data: dict, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def mlflow_children(uri: str, experiment: str) -> dict[str, object]:
    """Child runs of the search keyed by trial number."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return {r.data.tags["optuna.trial"]: r for r in runs if "optuna.trial" in r.data.tags}


def test_search_prunes_tracks_and_writes_a_runnable_best_yaml(search_config, tmp_path, capsys):
    path = write(tmp_path, search_config)
    result = run_search(path)
    study_dir = Path(search_config["output_dir"]) / "tiny"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}")
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.PRUNED in states and optuna.trial.TrialState.COMPLETE in states
    assert study.trials[0].params == {"train.lr": 0.005, "seed": 0}  # trial 0 is the config as written

    children = mlflow_children(search_config["tracking"]["uri"], "search-test")
    assert sorted(children) == [str(t.number) for t in study.trials]
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}
    for trial in study.trials:
        run = children[str(trial.number)]
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == status[trial.state.name]
        assert float(run.data.params["sampled.train.lr"]) == trial.params["train.lr"]
    parents = {r.data.tags["mlflow.parentRunId"] for r in children.values()}
    assert parents == {study.user_attrs["mlflow_parent_run_id"]}

    best_yaml = study_dir / "best.yaml"
    assert result.best_yaml == best_yaml and result.best.number == study.best_trial.number
    best = yaml.safe_load(best_yaml.read_text())
    assert best["train"]["lr"] == study.best_params["train.lr"] and best["seed"] == study.best_params["seed"]
    assert main(["run", str(best_yaml)]) == 0
    rerun = json.loads((Path(search_config["output_dir"]) / "tiny-best" / "results.json").read_text())
    assert rerun["dev"]["eer"] == pytest.approx(study.best_value)  # same seed, same CPU: the same model

    rows = [line.split(" | ") for line in result.table.splitlines()[2:]]
    assert [(r[0].strip("| "), r[1]) for r in rows] == [(str(t.number), t.state.name) for t in study.trials]
    assert [r[0].strip("| ") for r in rows if r[2].endswith(" *")] == [str(study.best_trial.number)]

    # n_trials counts finished trials: a rerun of a complete study trains nothing.
    assert main(["search", str(path)]) == 0
    assert len(optuna.load_study(study_name="tiny", storage=f"sqlite:///{study_dir / 'study.db'}").trials) == len(study.trials)
    assert f"best: trial {study.best_trial.number}" in capsys.readouterr().out


def _poll_trials(storage_url: str, proc: subprocess.Popen, wanted) -> list:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the search ended before it could be killed:\n{proc.stderr.read()}")
        try:
            trials = optuna.load_study(study_name="tiny", storage=open_storage(storage_url, 1, 2)).trials
        except KeyError:  # the study is not created yet
            trials = []
        if wanted(trials):
            return trials
        time.sleep(0.3)
    pytest.fail("no trial reached its first evaluation within 300 s")


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_killed_worker_leaves_a_failed_trial_and_the_study_continues(search_config, tmp_path, backend):
    storage = f"sqlite:///{tmp_path / 'study.db'}" if backend == "sqlite" else f"journal:{tmp_path / 'study.journal'}"
    search_config["search"].update({"storage": storage, "n_trials": 1, "pruner": "none",
                                    "heartbeat_interval": 1, "grace_period": 2})
    path = write(tmp_path, search_config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "metadg", "search", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _poll_trials(storage, proc, lambda ts: any(t.intermediate_values for t in ts))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(3)  # > grace_period since the dead worker's last heartbeat

    run_search(path)
    study = optuna.load_study(study_name="tiny", storage=open_storage(storage, 1, 2))
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers)))  # nothing lost, no number reused
    assert study.trials[0].state == optuna.trial.TrialState.FAIL
    assert [t.state.name for t in study.trials[1:]] == ["COMPLETE"]  # the rerun made up for the lost trial
    killed = mlflow_children(search_config["tracking"]["uri"], "search-test")["0"]
    assert killed.info.status == "FAILED" and killed.data.tags["optuna.state"] == "FAIL"


def test_two_worker_processes_share_one_storage(search_config, tmp_path):
    search_config["search"].update({"storage": f"journal:{tmp_path / 'study.journal'}", "n_trials": 4, "pruner": "none"})
    search_config["train"].update({"steps": 2})
    search_config["tracking"] = {"enabled": False}
    result = run_search(write(tmp_path, search_config), workers=2)
    numbers = [t.number for t in result.trials]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 4
    assert all(t.state.name == "COMPLETE" for t in result.trials)
    run_dirs = [t.user_attrs["run_dir"] for t in result.trials]
    assert len(set(run_dirs)) == len(run_dirs) and all((Path(d) / "results.json").is_file() for d in run_dirs)
    assert len({t.user_attrs["worker"] for t in result.trials}) == 2  # both processes ran trials


BAD_BLOCKS = [
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "search.params.train.lr.low: 0.1 is above high"),
    ({"params": {"train.lr": {"type": "flaot", "low": 0.1, "high": 0.2}}}, "search.params.train.lr.type: unknown distribution 'flaot'; did you mean 'float'?"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "lgo": True}}}, "search.params.train.lr.lgo: unknown key"),
    ({"params": {"train.lr": {"type": "float", "low": 0.0, "high": 0.2, "log": True}}}, "search.params.train.lr.low: must be > 0 with log"),
    ({"params": {"train.lr": {"type": "float", "low": "a", "high": 0.2}}}, "search.params.train.lr.low: Input should be a valid number"),
    ({"params": {"seed": {"type": "categorical", "choices": []}}}, "search.params.seed.choices: List should have at least 1 item"),
    ({"params": {"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "search.params.train.lrr.low: train.lrr=0.1 is not a valid config: train.lrr: unknown key; did you mean 'lr'?"),
    ({"params": {"adapter.r": {"type": "int", "low": 0, "high": 4}}}, "search.params.adapter.r.low: adapter.r=0 is not a valid config: adapter.r:"),
    ({"params": {"algorithm.name": {"type": "categorical", "choices": ["erm", "mdlg"]}}}, "search.params.algorithm.name.choices.1: algorithm.name=mdlg is not a valid config: algorithm.name: unknown algorithm 'mdlg'; did you mean 'mldg'?"),
    ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2}, "seed": {"type": "categorical", "choices": [0, 1]}}, "sampler": "cmaes"},
     "search.sampler: cmaes samples numeric parameters only; search.params.seed is categorical"),
    ({"sampler": "tpee"}, "search.sampler.name: unknown sampler 'tpee'; did you mean 'tpe'?"),
    ({"pruner": {"name": "median", "n_startup_trial": 1}}, "search.pruner.n_startup_trial: unknown key; did you mean 'n_startup_trials'?"),
    ({"n_trials": 0}, "search.n_trials: Input should be greater than or equal to 1"),
    ({"n_trials": None}, "search: set n_trials and/or timeout"),
    ({"n_trial": 3}, "search.n_trial: unknown key; did you mean 'n_trials'?"),
    ({"storage": "study.db"}, "search.storage: 'study.db' is neither a SQLAlchemy URL"),
    ({"params": {}}, "search.params: expected a non-empty mapping"),
]


@pytest.mark.parametrize("block, message", BAD_BLOCKS, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD_BLOCKS)])
def test_bad_search_blocks_name_the_key(tiny_config, tmp_path, block, message):
    tiny_config["search"] = {"params": {"train.lr": {"type": "float", "low": 0.001, "high": 0.01}}, "n_trials": 2, **block}
    path = write(tmp_path, tiny_config)
    with pytest.raises(ConfigError) as err:
        load_search(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_cli_reports_a_bad_block_without_traceback(tiny_config, tmp_path, capsys):
    tiny_config["search"] = {"params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.01}}, "n_trials": 2}
    assert main(["search", str(write(tmp_path, tiny_config))]) == 2
    err = capsys.readouterr().err
    assert "search.params.train.lr.low" in err and "Traceback" not in err
    assert not (Path(tiny_config["output_dir"]) / "tiny").exists()  # nothing trained, nothing written


def test_sampled_values_are_applied_like_overrides(tiny_config, tmp_path):
    tiny_config["search"] = {"params": {"train.lr": {"type": "float", "low": 1.0e-6, "high": 0.01, "log": True},
                                        "algorithm.name": {"type": "categorical", "choices": ["erm", "mldg"]}},
                             "n_trials": 2}
    spec = load_search(write(tmp_path, tiny_config), ["search.n_trials=5"])
    assert spec.cfg.n_trials == 5 and spec.sampler.seed == tiny_config["seed"]
    exp = spec.experiment({"train.lr": 1e-05, "algorithm.name": "mldg"})
    assert exp.train.lr == 1e-05 and exp.algorithm.name == "mldg"
    assert spec.default_values() == {"train.lr": 0.005, "algorithm.name": "erm"}
    assert load_search(write(tmp_path, tiny_config), ["train.lr=0.5"]).default_values() is None  # outside [low, high]

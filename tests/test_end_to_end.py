"""A tiny experiment end to end: trains, tracks in MLflow, its checkpoint reloads to the same scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from metadg.engine.checkpoint import CheckpointError
from metadg.config import build_experiment
from metadg.engine.scoring import score_utterances
from metadg.engine.batcher import DomainBatcher
from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack
from metadg.engine.trainer import Trainer, load_trained


def read_scores(path: Path) -> dict[str, float]:
    return {u: float(s) for u, s in (line.split() for line in path.read_text().splitlines())}


@pytest.fixture
def tracked(tiny_config, tmp_path):
    tiny_config["tracking"] = {"enabled": True, "uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "e2e"}
    tiny_config["algorithm"] = {"name": "mldg"}
    return tiny_config


def test_tiny_experiment_trains_tracks_and_reloads(tracked, tmp_path):
    from mlflow.tracking import MlflowClient

    exp = build_experiment(tracked)
    result = Trainer(exp).fit()
    run_dir = Path(result.run_dir)

    # What the run folder holds
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert build_experiment(saved).to_dict() == exp.to_dict()
    assert json.loads((run_dir / "results.json").read_text())["best_step"] == result.best_step
    assert 0 < result.trainable_params < result.total_params
    assert set(result.eval) == {"all"} and 0.0 <= result.eval["all"]["eer"] <= 1.0
    assert any(k.startswith("eer/") for k in result.eval["all"])  # per-domain breakdown

    # What MLflow holds, read back through its client
    client = MlflowClient(tracking_uri=exp.tracking.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["algorithm.name"] == "mldg"
    assert run.data.params["adapter.r"] == "4"
    assert int(run.data.params["trainable_params"]) == result.trainable_params
    assert run.data.metrics["eval/all/eer"] == pytest.approx(result.eval["all"]["eer"])
    dev_history = client.get_metric_history(result.run_id, "dev/eer")
    assert [m.step for m in dev_history] == [3, 6]
    assert len(client.get_metric_history(result.run_id, "train/loss")) >= 1
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"config.yaml", "scores", "checkpoint", "det.png"} <= artifacts
    assert (run_dir / "scores" / "det.png").stat().st_size > 1000
    from metadg.deploy.register import logged_detector  # the run's deployable model, logged as it finished

    assert logged_detector(result.run_id, exp.tracking.uri) is not None  # READY (tests/test_deploy_mlflow.py loads one)

    # The best checkpoint rebuilds the model and reproduces the saved scores
    _, model, _, meta = load_trained(run_dir / "checkpoints" / "best")
    assert meta["step"] == result.best_step
    assert set(meta["calibration"]) >= {"slope", "offset"}  # fitted on dev, kept for eval/score
    assert {"min_dcf", "act_dcf", "cllr"} <= set(result.eval["all"])
    task = exp.task.build(seed=exp.seed)
    dev = task.dev_set()
    dev_eer = task.metrics(score_utterances(model, dev, progress=False), dev)["eer"]
    assert dev_eer == pytest.approx(meta["dev"]["eer"], abs=1e-12)
    evals = task.eval_sets()["all"]
    rescored = score_utterances(model, evals, progress=False)
    saved_scores = read_scores(run_dir / "scores" / "all.txt")
    np.testing.assert_allclose(rescored, [saved_scores[u] for u in evals.ids], atol=2e-6)


def test_same_seed_same_scores(tiny_config, tmp_path):
    first = Trainer(build_experiment(tiny_config)).fit()
    second = Trainer(build_experiment(tiny_config)).fit()
    assert first.run_dir != second.run_dir
    a = (Path(first.run_dir) / "scores" / "all.txt").read_text()
    b = (Path(second.run_dir) / "scores" / "all.txt").read_text()
    assert a == b
    tiny_config["seed"] = 1
    third = Trainer(build_experiment(tiny_config)).fit()
    assert (Path(third.run_dir) / "scores" / "all.txt").read_text() != a


def test_early_stopping_stops_before_the_last_step(tiny_config):
    tiny_config["train"].update({"steps": 40, "eval_every": 1, "patience": 1, "lr": 1e-9})
    result = Trainer(build_experiment(tiny_config)).fit()
    assert result.steps_done < 40


def test_checkpoint_from_different_base_weights_is_refused(tiny_config):
    result = Trainer(build_experiment(tiny_config)).fit()
    ckpt = Path(result.run_dir) / "checkpoints" / "best"
    meta = json.loads((ckpt / "meta.json").read_text())
    meta["config"]["seed"] = 123  # rebuilds a different random backbone
    (ckpt / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="frozen backbone"):
        load_trained(ckpt)


@pytest.mark.parametrize("content", [b"\x80\x04K\x01.", b"not json"])
def test_non_checkpoint_is_refused(tmp_path, content):
    (tmp_path / "meta.json").write_bytes(content)
    (tmp_path / "trainable.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError):
        load_trained(tmp_path)


def test_domain_batcher_balances_domains_and_shares_bonafide(tiny_config):
    exp = build_experiment(tiny_config)
    task = exp.task.build(seed=0)
    utts = task.train_set()
    batcher = DomainBatcher(utts, partition=partition_by_attack(utts), policy=SharedBonafide(0.5), batch_per_domain=6, crop_samples=1234, seed=0)
    batches = batcher.next()
    spoof_attacks = sorted({a for a, y in zip(utts.attrs["attack"], utts.labels) if y == 0})
    assert sorted(batches) == spoof_attacks
    for b in batches.values():
        assert b.inputs.shape == (6, 1234)
        assert b.labels.tolist() == [1, 1, 1, 0, 0, 0]
    state = batcher.state_dict()
    nxt = batcher.next()
    batcher.load_state_dict(state)
    again = batcher.next()
    assert all(np.array_equal(nxt[d].inputs, again[d].inputs) for d in nxt)


def test_rawboost_augments_training_crops_only(tiny_config):
    plain = Trainer(build_experiment(tiny_config))
    plain.setup()
    tiny_config["task"]["augment"] = {"rawboost": 5}
    boosted = Trainer(build_experiment(tiny_config))
    boosted.setup()
    a, b = plain.batcher.next(), boosted.batcher.next()
    assert all(a[d].inputs.shape == b[d].inputs.shape for d in a)
    assert any(not np.allclose(a[d].inputs, b[d].inputs) for d in a)
    again = Trainer(build_experiment(tiny_config))
    again.setup()
    c = again.batcher.next()
    assert all(np.array_equal(b[d].inputs, c[d].inputs) for d in b)  # seeded
    assert boosted.dev_set.load(0).tolist() == plain.dev_set.load(0).tolist()  # dev audio untouched
    tiny_config["task"]["augment"] = {"rawboost": {"algo": 3, "min_snr_db": 20, "max_snr_db": 20}}
    assert build_experiment(tiny_config).task.cfg.augment.rawboost.algo == 3


def test_eval_and_score_commands(tiny_config, tmp_path, capsys):
    import soundfile as sf

    from metadg.cli import main

    result = Trainer(build_experiment(tiny_config)).fit()
    assert main(["eval", result.run_dir]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((Path(result.run_dir) / "eval" / "metrics.json").read_text())
    assert metrics["all"]["eer"] == pytest.approx(result.eval["all"]["eer"])  # same model, same scores
    assert f"{100 * result.eval['all']['eer']:.2f}" in out
    # eval scores with LoRA merged into the weights: the training-time scores up to float rounding
    again, trained = (read_scores(Path(result.run_dir) / d / "all.txt") for d in ("eval", "scores"))
    assert again.keys() == trained.keys() and all(abs(again[u] - trained[u]) < 1e-5 for u in again)

    folder = tmp_path / "inbox"
    folder.mkdir()
    sf.write(folder / "a.wav", np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    sf.write(folder / "b.flac", np.random.default_rng(1).standard_normal(12000).astype(np.float32) * 0.1, 16000)
    (folder / "broken.wav").write_bytes(b"RIFF....WAVEnot audio")
    csv_path = tmp_path / "scores.csv"
    assert main(["score", result.run_dir, str(folder), "--out", str(csv_path)]) == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "path,score,llr,decision,error" and len(rows) == 4
    broken = next(r for r in rows if "broken.wav" in r)
    assert "unreadable audio" in broken
    good = [r.split(",") for r in rows[1:] if "broken" not in r]
    assert all(r[3] in ("bonafide", "spoof") and np.isfinite(float(r[1])) and np.isfinite(float(r[2])) for r in good)
    assert "1 unreadable" in capsys.readouterr().out
    assert main(["score", result.run_dir, str(tmp_path / "nothing-here")]) == 1


def test_worker_processes_give_the_same_batches(tiny_config):
    exp = build_experiment(tiny_config)
    task = exp.task.build(seed=0)

    def batcher():
        return DomainBatcher(task.train_set(), partition=partition_by_attack(task.train_set()), policy=SharedBonafide(0.5), batch_per_domain=4,
                             crop_samples=2000, seed=3, augment=task.augmentation())

    in_process = batcher()
    expected = [in_process.next() for _ in range(3)]
    with_workers = batcher().iterate(num_workers=2)
    for want in expected:
        got = next(with_workers)
        assert sorted(got) == sorted(want)
        assert all(np.array_equal(got[d].inputs, want[d].inputs) and np.array_equal(got[d].labels, want[d].labels) for d in want)


def test_training_with_workers_matches_in_process(tiny_config):
    tiny_config["train"]["num_workers"] = 0
    a = Trainer(build_experiment(tiny_config)).fit()
    tiny_config["train"]["num_workers"] = 2
    b = Trainer(build_experiment(tiny_config)).fit()
    assert (Path(a.run_dir) / "scores" / "all.txt").read_text() == (Path(b.run_dir) / "scores" / "all.txt").read_text()

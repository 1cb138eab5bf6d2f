"""Model soups: uniform mean, greedy rule, incompatible runs refused, the soup folder is a normal run folder."""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from metadg.cli import main
from metadg.config import build_experiment, dump_yaml
from metadg.engine.build import build_model_and_adapter, load_trained
from metadg.engine.checkpoint import CheckpointError, frozen_fingerprint, read_checkpoint, save_checkpoint
from metadg.engine.evaluate import evaluate_checkpoint
from metadg.engine.scoring import scoring_options, utterance_logits
from metadg.engine.soup import make_soup
from metadg.engine.trainer import RunResult, Trainer
from tiny_experiment import tiny_experiment

ROOT = Path(__file__).resolve().parents[1]
# A pre-trained encoder: runs with different seeds then share one frozen base (a random
# preset would draw a different base per seed, and those cannot be averaged).
ASSET = str(ROOT / "benchmarks" / "assets" / "tiny-ssl")


def soup_config(cache: str, output_dir: Path, seed: int) -> dict:
    """tests/tiny_experiment.py's experiment on the pre-trained tiny encoder, 4 steps, smaller dev and eval sets."""
    cfg = tiny_experiment(cache, output_dir, name=f"seed{seed}", seed=seed, dev_size=(10, 5))
    cfg["model"]["backbone"] = {"name": "ssl", "pretrained": ASSET}
    cfg["train"].update({"steps": 4, "eval_every": 4, "lr": 0.01})
    return cfg


@pytest.fixture(scope="module")
def runs(synthetic_cache, tmp_path_factory) -> list[Path]:
    """Three tiny runs of one model and base, seeds 0, 1, 2 (shared by every test here)."""
    root = tmp_path_factory.mktemp("soup-runs")
    return [Path(Trainer(build_experiment(soup_config(synthetic_cache, root, s))).fit().run_dir) for s in range(3)]


def ckpt(run: Path) -> Path:
    return run / "checkpoints" / "best"


def dev_metric(model, adapter, task, exp, tensors) -> float:
    """The selection metric on the task's dev set of a model holding `tensors`."""
    adapter.load_state_dict(model, tensors)
    dev = task.dev_set()
    logits = utterance_logits(model, dev, progress=False, **scoring_options(exp.train))
    return task.metrics(logits, dev)[task.selection_metric]


def mean_of(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k].double() for s in states]).mean(0).to(states[0][k].dtype) for k in states[0]}


def test_uniform_soup_is_the_mean_and_a_normal_run_folder(runs, tmp_path, capsys):
    import soundfile as sf

    out = tmp_path / "uniform"
    soup = make_soup(runs, out)
    assert soup.kept == [str(r) for r in runs] and soup.method == "uniform"

    tensors, meta = read_checkpoint(ckpt(out))
    states = [read_checkpoint(ckpt(r))[0] for r in runs]
    assert set(tensors) == set(states[0]) and len(tensors) > 0
    for key, t in tensors.items():
        want = torch.stack([s[key].to(torch.float64) for s in states]).mean(0)
        assert t.dtype == states[0][key].dtype
        torch.testing.assert_close(t.double(), want, rtol=0, atol=1e-7, msg=key)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in tensors)  # the runs really differ

    # meta: what load_trained, eval and score need, and the soup's record
    assert meta["num_classes"] == 2 and meta["config"]["name"] == "uniform"
    assert meta["frozen_fingerprint"] == read_checkpoint(ckpt(runs[0]))[1]["frozen_fingerprint"]
    assert {"slope", "offset"} <= set(meta["calibration"])
    assert meta["soup"]["runs"] == [str(r) for r in runs] and meta["soup"]["method"] == "uniform"
    assert "eer" in meta["dev"]

    # results.json in the RunResult layout; the soup evaluates like any run
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {f.name for f in fields(RunResult)}
    RunResult(**results)
    assert results["dev"]["eer"] == pytest.approx(meta["dev"]["eer"])
    assert (out / "config.yaml").is_file() and (out / "scores" / "all.txt").is_file()
    again = evaluate_checkpoint(ckpt(out), tmp_path / "again", progress=False)
    assert again["all"]["eer"] == pytest.approx(results["eval"]["all"]["eer"])

    assert main(["eval", str(out)]) == 0
    assert f"{100 * results['eval']['all']['eer']:.2f}" in capsys.readouterr().out
    wav = tmp_path / "a.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    csv_path = tmp_path / "scores.csv"
    assert main(["score", str(out), str(wav), "--out", str(csv_path)]) == 0
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 2 and np.isfinite(float(rows[1].split(",")[1]))


def test_greedy_soup_keeps_exactly_the_improving_candidates(runs, tmp_path):
    soup = make_soup(runs, tmp_path / "greedy", greedy=True)
    # Recompute independently: each run's dev metric, the order, each candidate soup's dev metric.
    exp, model, adapter, _ = load_trained(ckpt(runs[0]))
    task = exp.task.build(seed=exp.seed)
    assert task.direction(task.selection_metric) == "min"
    states = {str(r): read_checkpoint(ckpt(r))[0] for r in runs}
    own = {name: dev_metric(model, adapter, task, exp, s) for name, s in states.items()}
    order = sorted(states, key=lambda n: own[n])  # stable: ties stay in the order given
    kept, best, trace = [order[0]], own[order[0]], []
    for name in order[1:]:
        value = dev_metric(model, adapter, task, exp, mean_of([states[k] for k in kept + [name]]))
        trace.append((name, value))
        if value < best:
            kept, best = kept + [name], value
    assert soup.kept == kept
    assert [t["run"] for t in soup.trace] == order
    assert [t["run_dev"] for t in soup.trace] == pytest.approx([own[n] for n in order])
    assert [(t["run"], t["soup_dev"]) for t in soup.trace[1:]] == [(n, pytest.approx(v)) for n, v in trace]
    assert [t["kept"] for t in soup.trace] == [True] + [n in kept for n, _ in trace]
    tensors, meta = read_checkpoint(ckpt(tmp_path / "greedy"))
    assert meta["soup"]["kept"] == kept and meta["soup"]["method"] == "greedy"
    expected = mean_of([states[k] for k in kept])
    assert all(torch.allclose(tensors[k].double(), expected[k].double(), atol=1e-7) for k in tensors)
    assert meta["dev"]["eer"] == pytest.approx(best)


def fake_run(cfg: dict, root: Path, name: str) -> Path:
    """A run folder holding an untrained best checkpoint of `cfg` (the compatibility check reads no data)."""
    exp = build_experiment(cfg)
    classes = cfg["task"].get("classes")
    n = len(classes) if classes else 2
    model, adapter = build_model_and_adapter(exp, n)
    run = root / name
    run.mkdir(parents=True)
    dump_yaml(exp.to_dict(), run / "config.yaml")
    save_checkpoint(ckpt(run), adapter.state_dict(model), {"config": exp.to_dict(), "step": 0, "dev": {},
                                                          "frozen_fingerprint": frozen_fingerprint(model), "num_classes": n})
    return run


def test_incompatible_runs_are_refused_naming_what_differs(runs, synthetic_cache, tmp_path):
    cfg = soup_config(synthetic_cache, tmp_path, 0)
    cfg["adapter"]["r"] = 8
    rank8 = Path(Trainer(build_experiment(cfg)).fit().run_dir)
    with pytest.raises(CheckpointError, match=rf"{runs[0]} and {rank8}: adapter.r 4 vs 8"):
        make_soup([runs[0], rank8], tmp_path / "s1")

    cfg = soup_config(synthetic_cache, tmp_path, 0)
    cfg["model"]["head"] = {"name": "aasist"}
    with pytest.raises(CheckpointError, match=r"model.head.name 'linear' vs 'aasist'"):
        make_soup([runs[0], fake_run(cfg, tmp_path, "aasist")], tmp_path / "s2")

    scenes = soup_config(synthetic_cache, tmp_path, 0)
    spec = {"name": "synthetic_scenes", "cache_dir": synthetic_cache}
    scenes["task"] = {"name": "audio_classification", "train": spec, "dev": spec, "classes": ["a", "b", "c"]}
    three = fake_run(scenes, tmp_path, "three")
    scenes["task"]["classes"] = ["a", "b", "c", "d"]
    four = fake_run(scenes, tmp_path, "four")
    with pytest.raises(CheckpointError, match=r"three and .*four: num_classes 3 vs 4"):
        make_soup([three, four], tmp_path / "s3")
    with pytest.raises(CheckpointError, match=r"task.name 'spoof_detection' vs 'audio_classification'"):
        make_soup([runs[0], three], tmp_path / "s4")

    # Another base: the same encoder with one weight changed, in another folder (the path alone is no difference).
    from safetensors.torch import load_file, save_file

    base = tmp_path / "other-ssl"
    shutil.copytree(ASSET, base)
    weights = load_file(base / "model.safetensors")
    name = "encoder.layers.0.attention.q_proj.weight"
    weights[name] = weights[name] + 0.01
    save_file(weights, base / "model.safetensors")
    cfg = soup_config(synthetic_cache, tmp_path, 0)
    cfg["model"]["backbone"]["pretrained"] = str(base)
    with pytest.raises(CheckpointError, match=r"different pretrained base weights \(frozen fingerprint\)"):
        make_soup([runs[0], fake_run(cfg, tmp_path, "other-base")], tmp_path / "s5")
    assert not any((tmp_path / f"s{i}").exists() for i in range(1, 6))  # nothing written for a refused soup

    assert main(["soup", str(runs[0]), "--out", str(tmp_path / "one")]) == 2  # one run is no soup
    assert main(["soup", str(runs[0]), str(rank8), "--out", str(tmp_path / "s6")]) == 1


def test_soup_command_prints_the_kept_runs_and_tracks(runs, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    # The soup tracks as its first run's config says: switch tracking on in a copy of run 0.
    first = tmp_path / "tracked0"
    shutil.copytree(runs[0], first)
    meta_path = ckpt(first) / "meta.json"
    meta = json.loads(meta_path.read_text())
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    meta["config"]["tracking"].update({"enabled": True, "uri": uri, "experiment": "soups"})
    meta_path.write_text(json.dumps(meta))

    out = tmp_path / "cli-soup"
    assert main(["soup", str(first), str(runs[1]), str(runs[2]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    kept = json.loads((ckpt(out) / "meta.json").read_text())["soup"]["kept"]
    assert f"kept {len(kept)}: {', '.join(kept)}" in printed
    assert "all" in printed and f"{100 * results['eval']['all']['eer']:.2f}" in printed

    run = MlflowClient(tracking_uri=uri).get_run(results["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "cli-soup"
    assert run.data.tags["algorithm"] == "soup" and run.data.tags["soup"] == "uniform"
    assert run.data.params["soup.runs"] == ",".join([str(first), str(runs[1]), str(runs[2])])
    assert run.data.params["adapter.r"] == "4"
    assert run.data.metrics["eval/all/eer"] == pytest.approx(results["eval"]["all"]["eer"])
    assert run.data.metrics["dev/eer"] == pytest.approx(results["dev"]["eer"])
    artifacts = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(results["run_id"])}
    assert {"config.yaml", "scores", "checkpoint"} <= artifacts

"""A task with more than two classes through every place the engine touches classes.

Sampling proportions, (N, C) scoring, checkpoints that reload with their class count
for eval and score, selection in the task's direction, bench tables and search direction.
"""

from __future__ import annotations

import copy
import csv
import json
from collections import Counter

import numpy as np
import optuna
import pytest
import soundfile as sf
import torch

from metadg.bench import Cell, format_table, higher_columns, results_rows, summarize
from metadg.cli import main
from metadg.config import build_experiment
from metadg.engine.batcher import DomainBatcher
from metadg.engine.build import load_trained
from metadg.engine.checkpoint import CheckpointError
from metadg.engine.sampling import ClassBalanced, Partition
from metadg.engine.scoring import utterance_logits
from metadg.engine.trainer import RunResult, Trainer
from metadg.engine.utterances import ArrayLoader, Utterances
from metadg.search.space import SearchConfig, SearchSpec
from metadg.search.study import trials_table

CLASSES = [f"c{i}" for i in range(10)]
DEVICES = ["d0", "d1", "d2"]


def synthetic_utts(n_classes: int, domains: list[str], per: int, seed: int = 0) -> Utterances:
    """`per` utterances of each class in each domain, random audio, label = class index."""
    rng = np.random.default_rng(seed)
    labels, doms = [], []
    for d in domains:
        for c in range(n_classes):
            labels += [c] * per
            doms += [d] * per
    waves = rng.standard_normal((len(labels), 400)).astype(np.float32)
    return Utterances([f"u{i}" for i in range(len(labels))], labels, {"device": doms}, ArrayLoader(waves), name="toy")


@pytest.fixture(scope="module")
def tone_list(tmp_path_factory):
    """A `list` corpus of 10 tone classes × 3 devices (devices d0, d1 train/dev; d2 only in eval)."""
    root = tmp_path_factory.mktemp("tones")
    sr, rng = 16000, np.random.default_rng(0)
    rows = ["path,label,device"]
    for c in range(10):
        for d, dev in enumerate(DEVICES):
            for k in range(3):
                t = np.arange(int(0.15 * sr)) / sr
                wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * c) * t) * (1 + 0.3 * d) + 0.01 * rng.standard_normal(t.size)
                path = root / "audio" / f"c{c}_{dev}_{k}.wav"
                path.parent.mkdir(exist_ok=True)
                sf.write(path, np.clip(wave, -1, 1).astype(np.float32), sr)
                rows.append(f"audio/{path.name},c{c},{dev}")
    (root / "all.csv").write_text("\n".join(rows) + "\n")
    seen = [r for r in rows[1:] if not r.endswith(",d2")]
    (root / "seen.csv").write_text("\n".join(rows[:1] + seen) + "\n")
    (root / "unseen.csv").write_text("\n".join(rows[:1] + [r for r in rows[1:] if r.endswith(",d2")]) + "\n")
    return root


@pytest.fixture
def ten_class_config(tone_list, tmp_path):
    """A complete 10-class experiment on the tone list (tracking off)."""
    spec = lambda name: {"name": "list", "path": str(tone_list / f"{name}.csv")}  # noqa: E731
    return copy.deepcopy({
        "name": "tones", "seed": 0, "output_dir": str(tmp_path / "runs"),
        "task": {"name": "audio_classification", "train": spec("seen"), "dev": spec("seen"),
                 "eval": {"unseen": spec("unseen")}, "crop_samples": 2000, "classes": CLASSES},
        "model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "linear"}},
        "adapter": {"name": "lora", "r": 4},
        "algorithm": {"name": "erm"},
        "train": {"steps": 4, "eval_every": 1, "batch_per_domain": 10, "lr": 0.01, "progress": False},
        "tracking": {"enabled": False},
    })


def test_class_balanced_policy_draws_every_class_in_its_planned_share():
    utts = synthetic_utts(6, ["a", "b"], per=5)
    partition = Partition.by_attribute(utts.attr("device"), "device")
    exact = DomainBatcher(utts, partition=partition, batch_per_domain=12, crop_samples=100, seed=0)
    for _ in range(3):  # B a multiple of C: exactly B / C of each class in every domain batch
        for batch in exact.next().values():
            assert Counter(batch.labels.tolist()) == {c: 2 for c in range(6)}
    steps, b = 300, 8  # 8 = 6 × 1 + a remainder of 2 drawn with class-balanced probabilities
    uneven = DomainBatcher(utts, partition=partition, batch_per_domain=b, crop_samples=100, seed=1)
    counts = {d: Counter() for d in "ab"}
    for _ in range(steps):
        for d, batch in uneven.next().items():
            assert len(batch) == b and set(batch.labels.tolist()) == set(range(6))  # every class, every step
            counts[d].update(batch.labels.tolist())
    expected = steps * b / 6  # 400; the remainder's binomial spread is ±9 per class
    for d in "ab":
        assert all(abs(counts[d][c] - expected) < 40 for c in range(6)), counts[d]


def test_class_balanced_remainder_is_balanced_even_when_classes_are_not():
    # Class 0 has 10× the utterances of the others: the remainder must not follow the class sizes.
    utts = synthetic_utts(3, ["a"], per=2)
    big = synthetic_utts(1, ["a"], per=18)
    labels = np.concatenate([utts.labels, big.labels])
    part = Partition(["a"], np.array(["a"] * labels.size, dtype=object), np.zeros(labels.size, dtype=bool))
    (remainder,) = [d for d in ClassBalanced().draws(labels, part, 4, "x")["a"] if d.weights is not None]
    share = {c: remainder.weights[labels[remainder.pool] == c].sum() for c in range(3)}
    assert all(abs(v - 1 / 3) < 1e-12 for v in share.values())


def test_ten_class_batches_and_scores_are_n_by_c(ten_class_config):
    exp = build_experiment(ten_class_config)
    trainer = Trainer(exp)
    trainer.setup()
    assert trainer.task.num_classes == 10 and trainer.model.num_classes == 10
    batches = trainer.batcher.next()
    assert sorted(batches) == ["d0", "d1"]
    for batch in batches.values():
        assert sorted(batch.labels.tolist()) == list(range(10))
    dev = trainer.dev_set
    logits = utterance_logits(trainer.model, dev, progress=False)
    assert logits.shape == (len(dev), 10) and np.isfinite(logits).all()
    metrics = trainer.task.metrics(logits, dev)
    predicted = logits.argmax(1)
    assert metrics["accuracy"] == pytest.approx(float((predicted == dev.labels).mean()))
    for d in ("d0", "d1"):  # per-domain accuracy from an independent count
        member = np.array(dev.attr("device")) == d
        assert metrics[f"accuracy/{d}"] == pytest.approx(float((predicted[member] == dev.labels[member]).mean()))


def test_ten_class_checkpoint_reloads_for_eval_and_score(ten_class_config, tone_list, tmp_path, capsys):
    result = Trainer(build_experiment(ten_class_config)).fit()
    ckpt = f"{result.run_dir}/checkpoints/best"
    exp, model, _, meta = load_trained(ckpt)
    assert meta["num_classes"] == 10 and model.num_classes == 10
    out = tmp_path / "eval"
    assert main(["eval", result.run_dir, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["unseen"]["accuracy"] == pytest.approx(result.eval["unseen"]["accuracy"])
    assert f"{100 * metrics['unseen']['accuracy']:.2f}" in printed
    assert (out / "confusion_unseen.png").stat().st_size > 0
    with (out / "unseen.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 30 and {r["predicted"] for r in rows} <= set(CLASSES)
    wavs = sorted((tone_list / "audio").glob("c1_d2_*.wav"))
    scores = tmp_path / "scores.csv"
    assert main(["score", result.run_dir, *map(str, wavs), "--out", str(scores)]) == 0
    with scores.open() as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == ["path", "predicted", *(f"p_{c}" for c in CLASSES), "error"]
    assert len(table) == len(wavs) == 3
    for row in table:
        probs = np.array([float(row[f"p_{c}"]) for c in CLASSES])
        assert probs.sum() == pytest.approx(1.0, abs=1e-5) and row["predicted"] == CLASSES[int(probs.argmax())]


@pytest.mark.parametrize("metric", ["accuracy", "log_loss"])
def test_selection_follows_the_task_direction(ten_class_config, metric):
    ten_class_config["task"]["selection_metric"] = metric
    ten_class_config["train"].update(steps=6, lr=0.03)
    seen: list[tuple[int, float]] = []
    trainer = Trainer(build_experiment(ten_class_config), on_eval=lambda step, dev: seen.append((step, dev[metric])))
    result = trainer.fit()
    values = [v for _, v in seen]
    want = max(values) if metric == "accuracy" else min(values)
    assert len(set(values)) > 1  # the choice is not trivial
    first_best = next(step for step, v in seen if v == want)  # ties keep the earlier step
    assert result.best_step == first_best and result.dev[metric] == want


def _run_result(dev: dict, evals: dict, label: str = "x") -> RunResult:
    return RunResult(label, "/tmp", 1, 1, 10, 100, 100, dev, evals)


def test_bench_table_has_accuracy_columns_with_max_as_best(ten_class_config):
    exp = build_experiment(ten_class_config)
    # Log loss deliberately rises with accuracy here, so the two columns pick different systems.
    done = [(Cell(f"{name} seed={s}", exp, name), _run_result({"accuracy": acc, "log_loss": acc},
                                                               {"unseen": {"accuracy": acc, "log_loss": acc}}))
            for name, accs in (("A", (0.5, 0.6)), ("B", (0.8, 0.9))) for s, acc in enumerate(accs)]
    rows = summarize(results_rows(done))
    assert {"dev_acc_%", "unseen_acc_%", "avg_acc_%", "unseen_logloss"} <= set(rows[0])
    table = format_table(rows, higher_columns(done))
    line_a, line_b = (next(l for l in table.splitlines() if l.startswith(f"| {n} ")) for n in "AB")
    assert "**85.00 ± 7.07**" in line_b and "**" not in line_a.split("|")[6]  # accuracy: the max is bold
    assert "**0.55 ± 0.07**" in line_a and "**0.85" not in line_b  # log loss: the min is bold


def test_search_maximises_accuracy_and_minimises_log_loss(ten_class_config, tmp_path):
    exp = build_experiment(ten_class_config)

    def spec(**cfg):
        return SearchSpec("s.yaml", ten_class_config, exp, {}, None, None, SearchConfig(params={}, **cfg))

    assert spec().objective == "accuracy" and spec().direction == "maximize"
    assert spec(objective="log_loss").direction == "minimize"
    assert spec(objective="log_loss", direction="maximize").direction == "maximize"
    study = optuna.create_study(direction="maximize")
    for value in (0.3, 0.9, 0.5):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    table = trials_table(spec(), study.trials)
    starred = [line for line in table.splitlines() if " *" in line]
    assert len(starred) == 1 and "0.9000 *" in starred[0]


def test_checkpoints_from_before_the_class_count_load_as_two_class(ten_class_config, tiny_config):
    # Checkpoints written before meta.json recorded num_classes are the spoof task's two-class ones.
    spoof = Trainer(build_experiment(tiny_config)).fit()
    ten = Trainer(build_experiment(ten_class_config)).fit()
    for result, fits in ((spoof, True), (ten, False)):
        meta_path = f"{result.run_dir}/checkpoints/best/meta.json"
        meta = json.loads(open(meta_path).read())
        meta.pop("num_classes")
        open(meta_path, "w").write(json.dumps(meta))
        if fits:
            assert load_trained(f"{result.run_dir}/checkpoints/best")[1].num_classes == 2
        else:  # a 10-class head's tensors do not fit the 2-class model: refused, not silently cut
            with pytest.raises(CheckpointError, match="do not fit"):
                load_trained(f"{result.run_dir}/checkpoints/best")

"""examples/plugin_task: a task + corpus shipped as a separate distribution, found through entry points.

The example is pip-installed into a temporary folder (never into the venv) and put on
PYTHONPATH of `python -m metadg ...` subprocesses, so this checks the whole path a
third-party package takes: entry-point discovery, config validation, training,
eval, score, bench and search, all with the plugin's own classes and metrics.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin_task"
CLASSES = ("low", "mid", "high")


@dataclass
class Installed:
    """The example installed into a temporary folder, and where the CLI runs."""

    src: Path  # a copy of examples/plugin_task (its YAMLs)
    work: Path  # the working folder of every command
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([sys.executable, "-m", "metadg", *args], cwd=self.work, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"metadg {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        assert "could not load" not in proc.stderr, proc.stderr  # a plugin that failed to load is only logged
        return proc

    def overrides(self) -> list[str]:
        return ["-o", f"output_dir={self.work / 'runs'}", "-o", "tracking.enabled=false"]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Installed:
    """`pip install --target` of a copy of the example (offline, no build isolation: setuptools is in the venv)."""
    base = tmp_path_factory.mktemp("plugin_task")
    src = base / "src"
    # A copy: pip builds in the source tree (build/, *.egg-info) and xdist workers may install at once.
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "runs",
                                                                 "mlflow.db", "mlartifacts"))
    target = base / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    assert (target / "metadg_plugin_example" / "task.py").is_file()
    assert list(target.glob("metadg_plugin_example-*.dist-info/entry_points.txt")), "no entry points installed"
    work = base / "work"
    work.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "METADG_CACHE": str(base / "cache")}
    return Installed(src, work, env)


def _section(text: str, title: str) -> list[str]:
    """Lines of one registry section of `metadg list`."""
    block = text.split(f"\n{title}:\n", 1)[1] if f"\n{title}:\n" in text else text.split(f"{title}:\n", 1)[1]
    return block.split("\n\n", 1)[0].splitlines()


def _md_table(text: str, first_col: str) -> list[dict[str, str]]:
    """The markdown table whose header starts with `| first_col |` as a list of rows."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_col} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def test_list_shows_the_plugin(plugin):
    out = plugin.cli("list").stdout
    tasks = _section(out, "tasks")
    corpora = _section(out, "corpora")
    assert any(line.startswith("  tone_pitch ") for line in tasks), tasks
    assert any(line.startswith("  tones ") for line in corpora), corpora
    assert any(line.startswith("  audio_classification ") for line in tasks)  # the built-ins are still there
    # its config fields are listed with their defaults, as for a built-in task
    i = next(i for i, line in enumerate(tasks) if line.startswith("  tone_pitch "))
    assert "selection_metric = 'accuracy'" in " ".join(tasks[i:i + 8])


# Runs in a subprocess: loading the plugin in this process would leave it in the registries of the test worker.
CONTRACT = r"""
import numpy as np
from metadg.config import ConfigError, validate_plugin
from metadg.tasks import CORPORA, TASKS, CorpusError

assert TASKS.get("tone_pitch").__module__ == "metadg_plugin_example.task"
assert CORPORA.get("tones").__module__ == "metadg_plugin_example.corpus"
small = {"name": "tones", "n_per_class": 2, "duration_s": 0.25}
task = validate_plugin(TASKS, {"name": "tone_pitch", "train": {**small, "split": "train"},
                               "dev": {**small, "split": "dev"},
                               "eval": {"all": {**small, "split": "eval"},
                                        "phone": {**small, "split": "eval", "rooms": ["phone"]}}}, "task").build(seed=0)
assert task.class_names == ("low", "mid", "high") and task.num_classes == 3, task.class_names
assert task.domain_key == "room" and task.selection_metric == "accuracy"
assert task.direction("accuracy") == "max" and task.direction("accuracy/phone") == "max"
assert task.direction("error_rate") == "min"

train = task.train_set()
assert len(train) == 3 * 3 * 2 and sorted(set(train.attr("room"))) == ["hall", "office", "studio"]
assert sorted(set(train.labels.tolist())) == [0, 1, 2]
assert [task.class_names[i] for i in train.labels] == train.attr("pitch")
wave = train.load(0)
assert wave.dtype == np.float32 and wave.shape == (4000,) and np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1
again = validate_plugin(TASKS, {"name": "tone_pitch", **task.cfg.model_dump()}, "task").build().train_set()  # deterministic
assert all(np.array_equal(train.load(i), again.load(i)) for i in range(len(train)))
assert not np.array_equal(train.load(0), task.dev_set().load(0))  # the splits differ
sets = task.eval_sets()
assert sorted(set(sets["all"].attr("room"))) == ["cave", "hall", "office", "phone", "studio"]
rows = [i for i, r in enumerate(sets["all"].attr("room")) if r == "phone"]  # a room's clips do not depend on the others
assert all(np.array_equal(sets["all"].load(i), sets["phone"].load(j)) for j, i in enumerate(rows))

utts = sets["all"]
logits = np.eye(3)[utts.labels] * 5.0                     # every prediction right ...
rooms = np.array(utts.attr("room"))
logits[rooms == "hall"] = np.roll(logits[rooms == "hall"], 1, axis=1)  # ... except in the hall
m = task.metrics(logits, utts)
assert m["accuracy"] == 0.8 and abs(m["error_rate"] - 0.2) < 1e-12, m
assert m["accuracy/hall"] == 0.0 and m["accuracy/phone"] == 1.0, m
assert sorted(k for k in m if k.startswith("accuracy/")) == [f"accuracy/{r}" for r in ("cave", "hall", "office", "phone", "studio")]
logits[rooms == "hall"] = np.nan                           # skipped utterances are left out
m = task.metrics(logits, utts)
assert m["accuracy"] == 1.0 and "accuracy/hall" not in m, m
assert np.isnan(task.metrics(np.full((len(utts), 3), np.nan), utts)["accuracy"])

for bad, key in (({**small, "rooms": ["attic"]}, "rooms"), ({**small, "n_per_clas": 3}, "n_per_clas")):
    try:
        validate_plugin(TASKS, {"name": "tone_pitch", "train": bad, "dev": small}, "task")
    except ConfigError as exc:
        assert f"task.train.{key}" in str(exc), str(exc)
    else:
        raise AssertionError(f"{bad} was accepted")
try:
    task.label_map()("treble")
except CorpusError as exc:
    assert "high, low, mid" in str(exc) or "low, mid, high" in str(exc), str(exc)
else:
    raise AssertionError("unknown label accepted")
print("contract ok")
"""


def test_task_contract(plugin):
    proc = subprocess.run([sys.executable, "-c", CONTRACT], cwd=plugin.work, env=plugin.env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "contract ok" in proc.stdout, proc.stdout + proc.stderr


def _write_wavs(folder: Path) -> list[Path]:
    import soundfile as sf

    sr = 16000
    t = np.arange(int(0.3 * sr)) / sr
    paths = []
    for i, f0 in enumerate((150.0, 350.0, 800.0, 420.0)):
        path = folder / ("nested" if i == 3 else "") / f"tone_{int(f0)}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        wave = sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 5))
        sf.write(path, wave.astype(np.float32), sr)
        paths.append(path)
    (folder / "notes.txt").write_text("not audio\n")
    return paths


def test_run_eval_score(plugin):
    run = plugin.cli("run", str(plugin.src / "experiment.yaml"), *plugin.overrides()).stdout
    match = re.search(r"run folder: (\S+)\s+best step (\d+)\s+dev accuracy ([\d.]+) %", run)
    assert match, run
    run_dir = Path(match.group(1))
    assert run_dir == plugin.work / "runs" / "tone-pitch"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps_done"] == 6 and 1 <= results["best_step"] <= 6
    assert f"{100 * results['dev']['accuracy']:.2f}" == match.group(3)
    assert set(results["eval"]) == {"seen", "unseen"}
    rooms = {"seen": {"studio", "hall", "office"}, "unseen": {"phone", "cave"}}
    for name, m in results["eval"].items():
        assert 0.0 <= m["accuracy"] <= 1.0
        assert m["error_rate"] == pytest.approx(1.0 - m["accuracy"])
        assert {k.split("/", 1)[1] for k in m if k.startswith("accuracy/")} == rooms[name]
    # the run's own per-set files have the task's columns
    with (run_dir / "scores" / "unseen.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header[:6] == ["utt", "label", "predicted", "logit_low", "logit_mid", "logit_high"] and "room" in header

    # eval: the printed table, metrics.json and the score files agree
    out = plugin.cli("eval", str(run_dir)).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["set", "accuracy", "%"], out
    printed = {parts[0]: float(parts[1]) for parts in (line.split() for line in lines[1:3])}
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert set(printed) == set(metrics) == {"seen", "unseen"}
    for name, m in metrics.items():
        assert 0.0 <= m["accuracy"] <= 1.0
        assert printed[name] == pytest.approx(100 * m["accuracy"], abs=0.006)
        assert m == pytest.approx(results["eval"][name])  # the checkpoint scores as it did at the end of training
        with (run_dir / "eval" / f"{name}.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        assert len(rows) == 3 * 3 * len(rooms[name])  # n_per_class 3 × classes × rooms
        assert m["accuracy"] == pytest.approx(np.mean([r["label"] == r["predicted"] for r in rows]))

    # score: one CSV row per audio file (folders searched recursively), the base Task.score_table columns
    wavs = _write_wavs(plugin.work / "wavs")
    out_csv = plugin.work / "scores.csv"
    out = plugin.cli("score", str(run_dir), str(plugin.work / "wavs"), "--out", str(out_csv)).stdout
    assert f"scored {len(wavs)} file(s)" in out, out
    with out_csv.open() as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header == ["path", "predicted", *(f"p_{c}" for c in CLASSES), "error"]
    assert sorted(r[0] for r in rows) == sorted(map(str, wavs))
    for row in rows:
        probs = [float(v) for v in row[2:5]]
        assert math.isclose(sum(probs), 1.0, abs_tol=1e-5) and all(0 <= p <= 1 for p in probs)
        assert row[1] == CLASSES[int(np.argmax(probs))] and row[5] == ""


def test_bench(plugin):
    out = plugin.cli("bench", str(plugin.src / "bench.yaml"), *plugin.overrides()).stdout
    rows = _md_table(out, "system")
    assert [r["system"] for r in rows] == ["ERM × LoRA", "ERM × full"], out
    for row in rows:
        for col in ("dev_acc_%", "seen_acc_%", "unseen_acc_%"):
            assert 0.0 <= float(row[col].strip("*")) <= 100.0, (col, row)
    lora, full = (int(r["trainable"].replace(",", "")) for r in rows)
    assert 0 < lora < full
    # accuracy is higher-is-better: the bold (best) dev value is the larger one
    dev = [float(r["dev_acc_%"].strip("*")) for r in rows]
    bold = [r["dev_acc_%"].startswith("**") for r in rows]
    assert bold[int(np.argmax(dev))], rows
    root = plugin.work / "runs" / "tone-pitch-bench"
    assert (root / "results.csv").is_file() and (root / "accuracy.png").is_file()


def test_search_maximises_accuracy(plugin):
    import optuna

    out = plugin.cli("search", str(plugin.src / "search.yaml"), *plugin.overrides()).stdout
    rows = _md_table(out, "trial")
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"], out
    values = [float(r["dev accuracy"].rstrip(" *")) for r in rows]
    starred = [r["trial"] for r in rows if r["dev accuracy"].endswith("*")]
    assert starred == [rows[int(np.argmax(values))]["trial"]], out  # the max is marked best, not the min
    assert all(0.0 <= v <= 1.0 for v in values)

    study_dir = plugin.work / "runs" / "tone-pitch-search"
    study = optuna.load_study(study_name="tone-pitch-search", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.best_value == pytest.approx(max(values), abs=1e-4)
    best_line = re.search(r"best: trial (\d+), dev accuracy ([\d.]+)", out)
    assert best_line and best_line.group(1) == str(study.best_trial.number) == starred[0], out
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert best["task"]["name"] == "tone_pitch"
    assert best["train"]["lr"] == pytest.approx(study.best_trial.params["train.lr"])
    assert best["adapter"]["r"] == study.best_trial.params["adapter.r"]

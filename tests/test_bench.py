"""Benchmarks: variants × grid cells, stable cell ids, resumable reruns, mean ± std over seeds."""

from __future__ import annotations

import os
import signal
import statistics
from pathlib import Path

import pytest
import yaml

from metadg.bench import expand, format_table, run_benchmark, summarize


@pytest.fixture
def bench_file(tmp_path, tiny_config):
    tiny_config["train"].update({"steps": 2, "eval_every": 2})
    data = {**tiny_config, "name": "mini",
            "variants": [{"label": "ERM", "algorithm": {"name": "erm"}}, {"label": "MLDG", "algorithm": {"name": "mldg"}}],
            "grid": {"seed": [0, 1]}}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_cells_systems_and_stable_ids(bench_file):
    name, cells = expand(bench_file)
    assert name == "mini" and [c.label for c in cells] == ["ERM seed=0", "ERM seed=1", "MLDG seed=0", "MLDG seed=1"]
    assert [c.system for c in cells] == ["ERM", "ERM", "MLDG", "MLDG"]
    ids = [c.cell_id for c in cells]
    assert len(set(ids)) == 4 and ids == [c.cell_id for c in expand(bench_file)[1]]
    moved = expand(bench_file, ["output_dir=/elsewhere", "tracking.experiment=other"])[1]
    assert [c.cell_id for c in moved] == ids  # where results go does not change what they are
    how = expand(bench_file, ["train.checkpoint_every=7", "train.num_workers=2", "train.progress=false"])[1]
    assert [c.cell_id for c in how] == ids  # nor how the run goes
    assert [c.cell_id for c in expand(bench_file, ["train.lr=0.5"])[1]] != ids


def test_keys_added_later_keep_the_ids_of_cells_that_never_set_them(bench_file):
    # Resolved configs gain the new keys' defaults; the cells run before they existed must still be found.
    from metadg.bench import _ADDED_KEYS

    ids = [c.cell_id for c in expand(bench_file)[1]]
    defaults = [f"{key}={'null' if value is None else str(value).lower()}" for key, value in _ADDED_KEYS]
    assert [c.cell_id for c in expand(bench_file, defaults)[1]] == ids
    for change in ("model.backbone.gradient_checkpointing=true", "task.augment.device=cpu"):
        assert [c.cell_id for c in expand(bench_file, [change])[1]] != ids, change


def test_summary_is_mean_and_std_over_seeds():
    rows = [{"system": "A seed=0", "group": "A", "trainable": 5, "x_eer_%": 10.0},
            {"system": "A seed=1", "group": "A", "trainable": 5, "x_eer_%": 14.0},
            {"system": "B", "group": "B", "trainable": 7, "x_eer_%": 11.0}]
    summary = summarize(rows)
    assert summary[0] == {"system": "A", "seeds": 2, "trainable": 5, "x_eer_%": (12.0, statistics.stdev([10.0, 14.0]))}
    table = format_table(summary)
    assert "12.00 ± 2.83" in table and "**11.00**" in table


def test_rerun_skips_finished_cells(bench_file, monkeypatch):
    root, done = run_benchmark(bench_file)
    assert len(done) == 4
    root = Path(root)
    assert "±" in (root / "results.md").read_text() and (root / "eer.png").stat().st_size > 0
    assert len((root / "results.csv").read_text().splitlines()) == 5  # one row per cell

    def refuse(self):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr("metadg.training.Trainer.fit", refuse)
    _, again = run_benchmark(bench_file)
    assert [r.eval for _, r in again] == [r.eval for _, r in done]


def test_an_interrupted_cell_resumes_under_the_same_parent_run(bench_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from metadg.engine.resume import StopRequested
    from metadg.engine.trainer import Trainer

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = ["grid.seed=[0]", "train.steps=4", "tracking.enabled=true", f"tracking.uri={uri}"]
    _, whole = run_benchmark(bench_file, overrides, output_dir=str(tmp_path / "whole"))

    real = Trainer._validate_step

    def stop_mldg_at_step_2(self, run_id, metric):
        real(self, run_id, metric)
        if self.exp.algorithm.name == "mldg" and self.loop.step == 2 and not hasattr(stop_mldg_at_step_2, "done"):
            stop_mldg_at_step_2.done = True
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Trainer, "_validate_step", stop_mldg_at_step_2)
    with pytest.raises(StopRequested):
        run_benchmark(bench_file, overrides, output_dir=str(tmp_path / "cut"))
    _, resumed = run_benchmark(bench_file, overrides, output_dir=str(tmp_path / "cut"))
    assert [r.eval for _, r in resumed] == [r.eval for _, r in whole]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("metadg").experiment_id])
    parents = {r.info.run_id for r in runs if r.data.tags.get("metadg.kind") == "benchmark"}
    assert len(parents) == 2  # one per output folder: the rerun reused its parent
    cut_children = [r for r in runs if r.info.run_id in {res.run_id for _, res in resumed}]
    assert len({r.data.tags["mlflow.parentRunId"] for r in cut_children}) == 1
    assert all(r.info.status == "FINISHED" for r in cut_children)

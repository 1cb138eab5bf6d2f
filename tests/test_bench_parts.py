"""Composite benchmarks (one table per part), labelled grid values, soup rows, relabelled cells read back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from metadg.bench import expand, plan, run_benchmark
from metadg.config import ConfigError
from metadg.engine.checkpoint import read_checkpoint


@pytest.fixture
def composite(tmp_path, tiny_config):
    tiny_config["train"].update({"steps": 2, "eval_every": 2})
    variants = [{"label": "ERM", "algorithm": {"name": "erm"}}, {"label": "MLDG", "algorithm": {"name": "mldg"}}]
    for name in ("alpha", "beta"):
        part = {**tiny_config, "name": name, "variants": variants, "grid": {"seed": [0, 1, 2]}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(part))
    (tmp_path / "beta.yaml").write_text((tmp_path / "beta.yaml").read_text().replace("r: 4", "r: 2"))
    data = {"name": "both", "parts": ["alpha.yaml", "beta.yaml"],
            "grid": {"train.lr": [0.005], "seed": [0, 1]},
            "soups": [{"label": "Soup", "greedy": False, "where": {"train.lr": 0.005}}]}
    path = tmp_path / "both.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_parts_take_the_composite_grid_and_keep_their_own_settings(composite):
    name, parts = plan(composite)
    assert name == "both" and [p.name for p in parts] == ["alpha", "beta"]
    for part in parts:  # the composite's grid replaced the parts' 3 seeds
        assert [c.label for c in part.cells] == [f"{v} lr=0.005 seed={s}" for v in ("ERM", "MLDG") for s in (0, 1)]
        assert {c.part for c in part.cells} == {part.name} and part.soups[0].label == "Soup"
    assert {c.experiment.to_dict()["adapter"]["r"] for c in parts[1].cells} == {2}  # beta.yaml's own adapter
    assert parts[0].cells[0].experiment.name == "both/alpha/ERM_lr=0.005_seed=0"
    assert len(expand(composite)[1]) == 8


def test_a_labelled_mapping_in_a_grid_names_cells_and_stays_out_of_the_config(tmp_path, tiny_config):
    tiny_config["grid"] = {"train.selection": [{"label": "tdv", "method": "training_domain"},
                                               {"label": "orc", "method": "oracle", "eval_set": "all"}]}
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    _, cells = expand(path)
    assert [c.label for c in cells] == ["selection=tdv", "selection=orc"]
    assert [c.experiment.train.selection.method for c in cells] == ["training_domain", "oracle"]
    assert cells[1].experiment.train.selection.eval_set == "all"


def test_bad_parts_and_soups_are_refused_naming_the_key(tmp_path, composite):
    data = yaml.safe_load(composite.read_text())
    for change, message in [({"parts": ["missing.yaml"]}, "parts: missing.yaml: no such file"),
                            ({"parts": "alpha.yaml"}, "parts: must be a non-empty list"),
                            ({"parts": ["alpha.yaml", "alpha.yaml"]}, "parts: two parts share a name"),
                            ({"soups": [{"label": "S", "wher": {}}]}, "soups[0]: unknown key(s) ['wher']"),
                            ({"soups": [{"greedy": "yes"}]}, "soups[0]: where: must map")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump(data | change))
        with pytest.raises(ConfigError, match=re.escape(f"{bad}: {message}")):
            plan(bad)


def test_composite_run_writes_a_table_per_part_and_soup_rows_that_average_the_seed(composite, monkeypatch):
    root, done = run_benchmark(composite)
    root = Path(root)
    text = (root / "results.md").read_text()
    assert text.startswith("## alpha") and "\n## beta" in text and text.count("| Soup |") == 2
    for part in ("alpha", "beta"):
        assert len((root / part / "results.csv").read_text().splitlines()) == 1 + 4 + 2  # cells + a soup per seed
    soups = [(c, r) for c, r in done if c.system == "Soup"]
    assert [(c.part, c.label) for c, _ in soups] == [(p, f"Soup seed={s}") for p in ("alpha", "beta") for s in (0, 1)]
    for cell, result in soups:  # the soup's weights are the mean of the seed's ERM and MLDG runs
        members = [r for c, r in done if c.part == cell.part and c.system != "Soup"
                   and c.experiment.seed == cell.experiment.seed]
        weights = [read_checkpoint(Path(r.run_dir) / "checkpoints" / "best")[0] for r in members]
        soup, _ = read_checkpoint(Path(result.run_dir) / "checkpoints" / "best")
        assert len(members) == 2 and set(soup) == set(weights[0])
        for key, value in soup.items():
            if value.is_floating_point():
                torch.testing.assert_close(value, (weights[0][key].double() + weights[1][key].double()).div(2).float())
        assert result.eval["all"] and result.steps_done == 0

    def refuse(*args, **kwargs):
        raise AssertionError("finished work was redone")

    monkeypatch.setattr("metadg.engine.trainer.Trainer.fit", refuse)
    monkeypatch.setattr("metadg.engine.soup.make_soup", refuse)
    first = next(c for c, _ in done if c.part == "alpha")
    folder = root / "alpha" / f"{first.label.replace(' ', '_')}-{first.cell_id}"
    folder.rename(folder.with_name(f"renamed-{first.cell_id}"))  # a relabelled cell is found by its config id
    _, again = run_benchmark(composite)
    assert [r.eval for _, r in again] == [r.eval for _, r in done]


def test_a_soup_that_matches_too_few_runs_is_refused(composite):
    data = yaml.safe_load(composite.read_text())
    data["parts"] = ["alpha.yaml"]
    data["soups"] = [{"label": "S", "where": {"algorithm.name": "erm"}}]
    composite.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="matches fewer than 2 cells of any one seed"):
        run_benchmark(composite)


def test_every_benchmark_file_of_the_repository_plans():
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    planned = {}
    for path in sorted(root.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        if raw.keys() & {"variants", "grid", "parts"} and "search" not in raw:
            planned[path.name] = plan(path)[1]
    zoo = planned["zoo.yaml"]  # both tasks × 15 algorithms × 3 selection protocols × 3 seeds, two soup rows each
    assert [(p.name, len(p.cells), len(p.soups)) for p in zoo] == [("zoo-spoof", 135, 2), ("zoo-scenes", 135, 2)]
    oracle = [c for p in zoo for c in p.cells if c.experiment.train.selection.method == "oracle"]
    assert len(oracle) == 90 and {c.experiment.train.selection.eval_set for c in oracle} == {"unseen"}

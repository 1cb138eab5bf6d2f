"""Stricter config types: no booleans for numbers, upper bounds on sizes that allocate, one-character delimiters."""

from __future__ import annotations

import pytest

from metadg.config import ConfigError, build_experiment


@pytest.mark.parametrize("section, key, value", [
    ("train", "steps", True), ("train", "lr", False), ("train", "grad_clip", True), ("train", "patience", True),
    ("algorithm", "alpha", True), ("adapter", "r", True),
])
def test_a_boolean_where_a_number_belongs_is_refused(tiny_config, section, key, value):
    if section == "algorithm":
        tiny_config["algorithm"] = {"name": "mldg"}
    tiny_config[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}[\s\S]*expected a number, got the boolean {value}"):
        build_experiment(tiny_config)


def test_booleans_still_set_switches_and_numbers_still_come_from_strings(tiny_config):
    tiny_config["train"].update({"amp": True, "steps": "5"})  # `${var}` expansion yields strings
    exp = build_experiment(tiny_config)
    assert exp.train.amp is True and exp.train.steps == 5


@pytest.mark.parametrize("section, key, value, bound", [
    ("train", "batch_per_domain", 10**6, "4096"), ("train", "eval_batch_size", 10**7, "4096"),
    ("task", "crop_samples", 16000 * 3600, str(16000 * 600)),
])
def test_sizes_that_allocate_have_an_upper_bound(tiny_config, section, key, value, bound):
    tiny_config[section][key] = value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}[\s\S]*less than or equal to {bound}"):
        build_experiment(tiny_config)


@pytest.mark.parametrize("delimiter", ["ab", "a", '"', "\n", " ", ""])
def test_a_list_delimiter_is_one_separator_character(tmp_path, tiny_config, delimiter):
    (tmp_path / "l.csv").write_text("path,label\n")
    tiny_config["task"]["eval"] = {"x": {"name": "list", "path": str(tmp_path / "l.csv"), "delimiter": delimiter}}
    with pytest.raises(ConfigError, match="delimiter"):
        build_experiment(tiny_config)


def test_a_filter_value_the_corpus_does_not_have_is_refused_before_training(tiny_config):
    from metadg.engine.trainer import Trainer

    tiny_config["task"]["train"]["filters"] = {"attack": ["Concat"]}  # the corpus says `concat`
    trainer = Trainer(build_experiment(tiny_config))
    with pytest.raises(ConfigError, match=r"filters\.attack: unknown attack value 'Concat'[\s\S]*concat"):
        trainer.setup()


def test_a_set_without_bona_fide_reports_na_metrics_and_still_writes_its_scores(tmp_path, run_dir, capsys):
    import csv
    import json

    import soundfile as sf
    import yaml

    from hostile import SR, cli, tone

    for i in range(3):
        sf.write(tmp_path / f"s{i}.wav", tone(hz=300.0 + 100 * i), SR)
    (tmp_path / "list.csv").write_text("path,label\n" + "".join(f"s{i}.wav,spoof\n" for i in range(3)))
    sets = tmp_path / "sets.yaml"
    sets.write_text(yaml.safe_dump({"eval": {"spoof_only": {"name": "list", "path": str(tmp_path / "list.csv")}}}))
    status, _, err = cli(capsys, "eval", str(run_dir), "--sets", str(sets), "--out", str(tmp_path / "out"))
    assert status == 0, err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["spoof_only"]
    assert metrics["eer"] != metrics["eer"] and metrics["min_dcf"] != metrics["min_dcf"]  # NaN: n/a
    rows = list(csv.DictReader((tmp_path / "out" / "spoof_only.csv").open()))
    assert len(rows) == 3 and all(float(r["score"]) == float(r["score"]) for r in rows)

"""Names that become paths: evaluation sets, runs, studies and benchmarks are plain names, never a way out of a folder."""

from __future__ import annotations

import pytest
import yaml

from metadg.config import ConfigError, build_experiment, nested_name, plain_name
from metadg.engine.evaluate import evaluate_sets

HOSTILE = ["../../x/evil", "/tmp/evil", "a/b", "a\\b", "..", ".", "", "  ", "a\x00b", "a\nb", "bell\x07",
           "right\u202eto-left", "iso\u2066late", "x" * 256]


@pytest.mark.parametrize("name", HOSTILE)
def test_plain_names_refuse_separators_dots_controls_and_bidi(name):
    with pytest.raises(ConfigError, match=r"^task\.eval: "):
        plain_name(name, "task.eval")


@pytest.mark.parametrize("name", ["eval", "ASVspoof 2021 LA", "dev-1.v2", "scène_é", "日本語", "x" * 255])
def test_ordinary_names_pass(name):
    assert plain_name(name, "k") == name and nested_name(f"{name}/{name}", "k") == f"{name}/{name}"


@pytest.mark.parametrize("name", ["../up", "/abs", "a//b", "a/../b", "a/\x00", "run/\u202eexe.txt", "a/"])
def test_nested_names_refuse_every_part_that_is_not_plain(name):
    with pytest.raises(ConfigError, match=r"^name: "):
        nested_name(name, "name")


@pytest.mark.parametrize("name", ["../../x/evil", "/tmp/evil", "a\u202eb"])
def test_an_eval_set_name_that_is_a_path_is_refused_by_the_config(tiny_config, name):
    tiny_config["task"]["eval"] = {name: tiny_config["task"]["eval"]["all"]}
    with pytest.raises(ConfigError, match=r"task\.eval"):
        build_experiment(tiny_config)


@pytest.mark.parametrize("name", ["../escape", "/tmp/evil", "ok/../../up"])
def test_a_run_name_cannot_leave_output_dir(tiny_config, name):
    with pytest.raises(ConfigError, match=r"^name: "):
        build_experiment({**tiny_config, "name": name})


def test_eval_sets_refuse_a_path_from_a_task_plugin_before_writing(tmp_path):
    class Task:  # a plugin task that bypassed its config's checks
        def metrics(self, *a):
            raise AssertionError("scored a set whose name is a path")

    with pytest.raises(ConfigError, match="evaluation set name: '../out'"):
        evaluate_sets(None, Task(), {"../out": None}, tmp_path / "scores", calibration=None, device="cpu", options={})
    assert not (tmp_path / "scores").exists()


def test_a_benchmark_or_study_name_must_stay_inside_output_dir(tmp_path, tiny_config, capsys):
    from metadg.bench import plan
    from metadg.search.space import SearchConfig

    bench = tmp_path / "b.yaml"
    bench.write_text(yaml.safe_dump({**tiny_config, "name": "../../elsewhere", "grid": {"seed": [0]}}))
    with pytest.raises(ConfigError, match=r"b\.yaml: name: '\.\./\.\./elsewhere'"):
        plan(bench)
    with pytest.raises(Exception, match="study_name"):
        SearchConfig(study_name="/tmp/study")

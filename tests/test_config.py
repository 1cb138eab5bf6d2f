"""Experiment config: includes, overrides, validation errors naming the key, CLI exit status."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from metadg.config import ConfigError, build_experiment, deep_merge, load_config, load_raw


def write(path, data):
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_include_merge_order_and_override(tmp_path, tiny_config):
    write(tmp_path / "a.yaml", {**tiny_config, "seed": 1, "train": {"steps": 10, "lr": 0.1}})
    write(tmp_path / "b.yaml", {"seed": 2, "train": {"steps": 20}})
    write(tmp_path / "exp.yaml", {"include": ["a.yaml", "b.yaml"], "train": {"eval_every": 5}})
    exp = load_config(tmp_path / "exp.yaml")
    assert exp.seed == 2  # later include wins over earlier
    assert exp.train.steps == 20 and exp.train.lr == 0.1 and exp.train.eval_every == 5  # deep merge
    exp = load_config(tmp_path / "exp.yaml", ["train.steps=7", "algorithm.name=mldg", "algorithm.beta=2.5"])
    assert exp.train.steps == 7
    assert exp.algorithm.name == "mldg" and exp.algorithm.cfg.beta == 2.5
    assert exp.name == "tiny"  # from the include
    write(tmp_path / "a.yaml", {k: v for k, v in tiny_config.items() if k != "name"})
    assert load_config(tmp_path / "exp.yaml").name == "exp"  # default: the file's stem


def test_file_wins_over_its_includes(tmp_path, tiny_config):
    write(tmp_path / "base.yaml", {**tiny_config, "seed": 5})
    write(tmp_path / "exp.yaml", {"include": "base.yaml", "seed": 9})
    assert load_config(tmp_path / "exp.yaml").seed == 9


def test_changing_plugin_name_replaces_section():
    merged = deep_merge({"adapter": {"name": "lora", "r": 8}}, {"adapter": {"name": "full"}})
    assert merged["adapter"] == {"name": "full"}
    merged = deep_merge({"adapter": {"name": "lora", "r": 8}}, {"adapter": {"alpha": 4}})
    assert merged["adapter"] == {"name": "lora", "r": 8, "alpha": 4}


def test_include_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", {"include": ["b.yaml"]})
    write(tmp_path / "b.yaml", {"include": ["a.yaml"]})
    with pytest.raises(ConfigError, match="include cycle"):
        load_raw(tmp_path / "a.yaml")


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"algorithm": {"name": "mldg", "betta": 1}}, r"algorithm\.betta: unknown key; did you mean 'beta'\?"),
        ({"algorithm": {"name": "mldg", "alpha": "fast"}}, r"algorithm\.alpha: .*number.*'fast'"),
        ({"algorithm": {"name": "mdlg"}}, r"algorithm\.name: unknown algorithm 'mdlg'; did you mean 'mldg'\? \(valid: [a-z, ]*\berm, [a-z, ]*mldg\b"),
        ({"adapter": {"name": "lora", "r": 0}}, r"adapter\.r: .*greater than or equal to 1"),
        ({"train": {"stepz": 3}}, r"train\.stepz: unknown key; did you mean 'steps'\?"),
        ({"tracking": {"uri": 3}}, r"tracking\.uri: "),
        ({"sed": 3}, r"sed: unknown key; did you mean 'seed'\?"),
        ({"model": {"backbone": {"name": "ssl", "preset": "huge"}, "head": {"name": "linear"}}}, r"model\.backbone: .*unknown preset 'huge'"),
        ({"model": {"backbone": {"name": "ssl", "preset": "tiny"}, "head": {"name": "aasist2"}}}, r"model\.head\.name: unknown head"),
    ],
)
def test_bad_config_names_the_key(tiny_config, patch, expected):
    with pytest.raises(ConfigError, match=expected):
        build_experiment({**tiny_config, **patch}, source="exp.yaml")


def test_nested_corpus_errors_name_the_path(tiny_config):
    tiny_config["task"]["train"]["name"] = "synthtic"
    with pytest.raises(ConfigError, match=r"task\.train\.name: unknown corpus 'synthtic'; did you mean 'synthetic'"):
        build_experiment(tiny_config)
    tiny_config["task"]["train"]["name"] = "synthetic"
    tiny_config["task"]["eval"]["all"]["splt"] = "eval"
    with pytest.raises(ConfigError, match=r"task\.eval\.all\.splt: unknown key; did you mean 'split'"):
        build_experiment(tiny_config)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path / "bad.yaml", "seed: 1\ntrain: {steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: invalid YAML"):
        load_raw(path)


def test_unsafe_yaml_tag_is_refused(tmp_path):
    path = write(tmp_path / "evil.yaml", "seed: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_raw(path)


def test_resolved_config_round_trips(tiny_config):
    exp = build_experiment(tiny_config)
    again = build_experiment(exp.to_dict())
    assert again.to_dict() == exp.to_dict()
    assert exp.to_dict()["algorithm"] == {"name": "erm"}
    assert exp.to_dict()["adapter"]["targets"] == ["q_proj", "k_proj", "v_proj", "out_proj"]


def test_cli_bad_config_exits_2_without_traceback(tmp_path, tiny_config):
    path = write(tmp_path / "exp.yaml", {**tiny_config, "algorithm": {"name": "mldg", "betta": 1}})
    proc = subprocess.run([sys.executable, "-m", "metadg", "run", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "algorithm.betta: unknown key" in proc.stderr and str(path) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_list_shows_plugins_and_defaults():
    proc = subprocess.run([sys.executable, "-m", "metadg", "list"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for needle in ("mldg", "erm", "lora", "full", "head_only", "spoof_detection", "ssl", "linear", "synthetic", "n_meta_test = 1"):
        assert needle in proc.stdout


def test_vars_and_environment_are_expanded(tmp_path, tiny_config, monkeypatch):
    monkeypatch.setenv("METADG_TEST_RUNS", str(tmp_path / "from-env"))
    cfg = {**tiny_config, "vars": {"exp": "alpha", "tag": "${exp}-1"}, "name": "run-${tag}", "output_dir": "${METADG_TEST_RUNS}"}
    write(tmp_path / "exp.yaml", cfg)
    exp = load_config(tmp_path / "exp.yaml")
    assert exp.name == "run-alpha-1" and exp.output_dir == str(tmp_path / "from-env")
    assert load_config(tmp_path / "exp.yaml", ["vars.exp=beta"]).name == "run-beta-1"
    write(tmp_path / "bad.yaml", {**cfg, "name": "${nope}"})
    with pytest.raises(ConfigError, match=r"name: \$\{nope\} is neither in vars: \(exp, tag\) nor an environment variable"):
        load_config(tmp_path / "bad.yaml")
    write(tmp_path / "cycle.yaml", {**cfg, "vars": {"a": "${b}", "b": "${a}"}})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "cycle.yaml")


def test_moved_keys_keep_working(tiny_config, caplog):
    # train.bonafide_fraction is now the spoof task's sampling setting; MLDG's flag was renamed.
    old = {**tiny_config, "train": {**tiny_config["train"], "bonafide_fraction": 0.25},
           "algorithm": {"name": "mldg", "meta_test_bonafide": False}}
    new = {**tiny_config, "task": {**tiny_config["task"], "bonafide_fraction": 0.25},
           "algorithm": {"name": "mldg", "meta_test_shared": False}}
    with caplog.at_level("WARNING"):
        assert build_experiment(old).to_dict() == build_experiment(new).to_dict()
    assert "write task.bonafide_fraction" in caplog.text
    assert "bonafide_fraction" not in build_experiment(old).to_dict()["train"]
    other = {**old, "task": {"name": "audio_classification", "train": {"name": "synthetic_scenes"},
                             "dev": {"name": "synthetic_scenes"}}}
    with pytest.raises(ConfigError, match="moved to task.bonafide_fraction"):
        build_experiment(other)


def test_choices_by_name_come_from_the_registries(tiny_config):
    for key, bad in (("schedule", "cosin"), ("selection", {"method": "orcale"})):
        with pytest.raises(ConfigError, match="did you mean") as err:
            build_experiment({**tiny_config, "train": {**tiny_config["train"], key: bad}})
        assert "valid:" in str(err.value)

"""Hostile YAML, overrides, includes and plugin names through the public entry points (the policy: see tests/test_bad_input.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import metadg.config
from metadg.config import ConfigError, load_config, load_raw
from hostile import cli


# ---------------------------------------------------------------- YAML


@pytest.fixture
def experiment_yaml(tmp_path, tiny_config):
    """A valid experiment file (the base that the hostile cases modify)."""
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    return path


TAGS = [
    "!!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/apply:subprocess.call [['touch', '{marker}']]",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "!!python/name:os.system",
    "!!python/module:os",
    "!include /etc/passwd",
    "!env HOME",
]


@pytest.mark.parametrize("tag", TAGS)
def test_yaml_tags_are_refused_and_never_run(experiment_yaml, sandbox, capsys, tag):
    marker = experiment_yaml.parent / "MARKER"
    value = tag.format(marker=marker)
    evil = experiment_yaml.with_name("evil.yaml")
    evil.write_text(experiment_yaml.read_text().replace("seed: 0\n", f"seed: {value}\n"))
    box = sandbox()
    status, _, err = cli(capsys, "run", str(evil), "--dry-run")
    assert status == 2 and re.search(r"evil\.yaml:\d+:\d+: invalid YAML: could not determine a constructor", err), err
    status, _, err = cli(capsys, "run", str(experiment_yaml), "--dry-run", "-o", f"seed={value}")
    assert status == 2 and re.search(r"exp\.yaml: override .seed=.*invalid YAML: could not determine a constructor", err), err
    assert not marker.exists() and not (box.cwd / marker.name).exists()
    assert box.written() == set()


def _laughs(levels: int = 9, indent: str = "") -> str:
    """The classic billion-laughs document: 9 aliases per level, 9**levels strings once expanded."""
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_within_bounded_memory(tmp_path, experiment_yaml):
    experiment_yaml.write_text(experiment_yaml.read_text() + "vars:\n" + _laughs(indent="  "))
    # A separate process with a memory cap: if the bomb ever expanded, it would die there, not take the test run with it.
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from metadg.config import ConfigError, load_config\n"
            "try:\n    load_config(sys.argv[1])\nexcept ConfigError as exc:\n    sys.exit(f'error: {exc}')")
    proc = subprocess.run([sys.executable, "-c", code, str(experiment_yaml)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(r"exp\.yaml:\d+: anchors and aliases here expand to more than 100,000 values", proc.stderr)


def test_alias_bombs_are_refused_in_includes_overrides_and_recursion(tmp_path, experiment_yaml):
    (tmp_path / "bomb.yaml").write_text("vars:\n" + _laughs(indent="  "))
    (tmp_path / "with-include.yaml").write_text("include: [exp.yaml, bomb.yaml]\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml:\d+: anchors and aliases .* \(included from .*with-include\.yaml\)"):
        load_config(tmp_path / "with-include.yaml")
    names = "abcdef"  # 10**6 strings from a one-line override
    items = ["&a [" + ", ".join(["lol"] * 10) + "]"] + [f"&{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip(names, names[1:])]
    flow = "[" + ", ".join(items) + "]"
    with pytest.raises(ConfigError, match=r"override 'vars\.x=.*value:1: anchors and aliases"):
        load_config(experiment_yaml, [f"vars.x={flow}"])
    (tmp_path / "recursive.yaml").write_text("task: &t {name: spoof_detection, train: *t}\n")
    with pytest.raises(ConfigError, match=r"recursive\.yaml:1: an alias refers to a node that contains it"):
        load_raw(tmp_path / "recursive.yaml")
    # Shared anchors of normal size stay fine.
    (tmp_path / "shared.yaml").write_text(
        "include: exp.yaml\ntask:\n  dev: &c {name: synthetic, split: dev}\n  eval: {a: *c, b: *c}\n")
    shared = load_raw(tmp_path / "shared.yaml")["task"]
    assert shared["eval"]["a"] == shared["eval"]["b"] == {"name": "synthetic", "split": "dev"}


def test_var_expansion_bomb_is_refused(experiment_yaml):
    bomb = "vars:\n  v0: xxxxxxxxxx\n" + "".join(f"  v{i + 1}: '{'${v%d}' % i * 4}'\n" for i in range(30))
    experiment_yaml.write_text(experiment_yaml.read_text().replace("name: tiny", "name: ${v30}") + bomb)
    with pytest.raises(ConfigError, match=r"exp\.yaml: vars\.v\d+: \$\{\.\.\.\} expansion exceeds 1,000,000 characters"):
        load_config(experiment_yaml)


def test_include_fan_out_reads_each_file_once(tmp_path, experiment_yaml, monkeypatch):
    for level in range(10):  # level k includes level k+1 ten times: 10**10 reads if nothing were shared
        nxt = "exp.yaml" if level == 9 else f"level{level + 1}.yaml"
        (tmp_path / f"level{level}.yaml").write_text(yaml.safe_dump({"include": [nxt] * 10}))
    reads: list[Path] = []
    real = metadg.config.read_yaml
    monkeypatch.setattr(metadg.config, "read_yaml", lambda p: reads.append(Path(p)) or real(p))
    assert load_config(tmp_path / "level0.yaml").name == "tiny"
    assert len(reads) == len(set(reads)) == 11


BAD_CONFIGS = {  # name → (file text, or a patch of the valid experiment, and the expected message)
    "steps is a word": ({"train": {"steps": "many"}}, r"train\.steps: Input should be a valid integer.*'many'"),
    "list for a mapping": ({"train": [1, 2]}, r"train: Input should be a valid dictionary"),
    "list for a plugin section": ({"adapter": ["lora"]}, r"adapter: expected a mapping with a 'name' key, got list"),
    "plugin name is a list": ({"algorithm": {"name": ["erm"]}}, r"algorithm\.name: must be a plugin name, got list"),
    "seed out of range": ({"seed": 10**30}, r"seed: must be an integer from 0 to 2\*\*63 - 1"),
    "name leaves output_dir": ({"name": "../../elsewhere"}, r"name: '\.\./\.\./elsewhere' must be a relative folder name"),
    "absolute name": ({"name": "/tmp/elsewhere"}, r"name: '/tmp/elsewhere' must be a relative folder name"),
    "top level is a list": ("- task\n- model\n", r"exp\.yaml: top level must be a mapping, got list"),
    "top level is a string": ("just words\n", r"exp\.yaml: top level must be a mapping, got str"),
    "empty file": ("", r"exp\.yaml: task: missing section"),
    "non-string top key": ("1: one\n", r"exp\.yaml: 1: unknown key"),
    "duplicate key": ("seed: 1\nseed: 2\n", r"exp\.yaml:2: duplicate key 'seed' \(first on line 1\)"),
    "nested too deeply": ("a: " + "[" * 3000 + "]" * 3000 + "\n", r"exp\.yaml: invalid YAML: nested too deeply"),
    "include cycle": ("include: exp.yaml\n", r"exp\.yaml: include cycle"),
    "include of a folder": ("include: [.]\n", r"config file is a folder, not a regular file \(included from .*exp\.yaml\)"),
}


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for k, v in patch.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_2_naming_the_key(experiment_yaml, tiny_config, sandbox, capsys, case):
    content, pattern = BAD_CONFIGS[case]
    text = content if isinstance(content, str) else yaml.safe_dump(_merge(tiny_config, content))
    experiment_yaml.write_text(text)
    box = sandbox()
    # Without --dry-run: a config error must stop `run` before anything is built or written.
    status, _, err = cli(capsys, "run", str(experiment_yaml))
    assert status == 2 and re.search(pattern, err), err
    assert box.written() == set()


@pytest.mark.parametrize(("override", "pattern"), [
    ("task.train.filters={atack: [A01]}", r"task\.train\.filters\.atack: unknown attribute 'atack'; did you mean 'attack'"),
    ("task.domain_key=speakr", r"task\.domain_key: unknown attribute 'speakr'; did you mean 'speaker'"),
])
def test_attribute_typos_found_when_reading_the_corpus_exit_2(experiment_yaml, tiny_config, sandbox, capsys, override, pattern):
    box = sandbox()
    status, _, err = cli(capsys, "run", str(experiment_yaml), "-o", override)
    assert status == 2 and re.search(pattern, err), err
    runs = Path(tiny_config["output_dir"])
    assert all(p == runs or runs in p.parents for p in box.written()), box.written()  # at most the run folder was started


def test_config_that_is_a_folder(tmp_path, capsys):
    status, _, err = cli(capsys, "run", str(tmp_path), "--dry-run")  # `run` resumes run folders, not any folder
    assert status == 2 and f"{tmp_path}: a folder but not a run folder to resume (no config.yaml)" in err
    status, _, err = cli(capsys, "params", str(tmp_path))
    assert status == 2 and f"{tmp_path}: config file is a folder, not a regular file" in err


PLUGINS = [  # dotted key, wrong name, kind in the message, the suggestion
    ("algorithm.name", "mdlg", "algorithm", "mldg"),
    ("adapter.name", "lroa", "adapter", "lora"),
    ("task.name", "spoof_detect", "task", "spoof_detection"),
    ("model.backbone.name", "ssll", "backbone", "ssl"),
    ("model.head.name", "aasits", "head", "aasist"),
    ("task.train.name", "synthetik", "corpus", "synthetic"),
]


@pytest.mark.parametrize(("key", "wrong", "kind", "right"), PLUGINS)
def test_unknown_plugin_name_suggests_and_lists_choices(experiment_yaml, capsys, key, wrong, kind, right):
    status, _, err = cli(capsys, "run", str(experiment_yaml), "--dry-run", "-o", f"{key}={wrong}")
    assert status == 2
    assert re.search(rf"{re.escape(key)}: unknown {kind} '{wrong}'; did you mean '{right}'\? \(valid: .*{right}", err), err



"""Registry: duplicates refused, did-you-mean errors, entry-point plugins discovered."""

from __future__ import annotations

import textwrap

import pytest

from metadg.config import build_experiment
from metadg.registry import ALGORITHMS, Registry, RegistryError


def test_duplicate_name_is_refused():
    reg: Registry[type] = Registry("widget", "metadg.test-none")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(RegistryError, match="already registered"):

        @reg.register("a")
        class B:
            pass

    assert reg.get("a") is A


def test_unknown_name_suggests_and_lists_choices():
    with pytest.raises(RegistryError) as err:
        ALGORITHMS.get("mdlg")
    msg = str(err.value)
    assert "did you mean 'mldg'" in msg
    assert "erm" in msg and "mldg" in msg


def test_builtins_are_registered():
    assert {"erm", "mldg"} <= set(ALGORITHMS.names())


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """A tiny installed distribution that declares a metadg.algorithms entry point."""
    (tmp_path / "toy_metadg_plugin.py").write_text(textwrap.dedent('''
        from metadg.algorithms.erm import ERM

        class ToyAlgorithm(ERM):
            """A third-party algorithm (ERM under another name)."""
    '''))
    dist = tmp_path / "toy_metadg_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-metadg-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metadg.algorithms]\ntoy = toy_metadg_plugin:ToyAlgorithm\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_entry_point_plugin_is_discovered(plugin_dist):
    reg: Registry[type] = Registry("algorithm", "metadg.algorithms")
    cls = reg.get("toy")
    assert cls.__name__ == "ToyAlgorithm"
    assert "toy" in reg.names()


def test_entry_point_plugin_usable_from_config(plugin_dist, monkeypatch, tiny_config):
    fresh: Registry[type] = Registry("algorithm", "metadg.algorithms", "metadg.algorithms")
    monkeypatch.setattr("metadg.config.ALGORITHMS", fresh)
    exp = build_experiment({**tiny_config, "algorithm": {"name": "toy"}})
    assert exp.algorithm.cls.__name__ == "ToyAlgorithm"


def test_broken_entry_point_does_not_hide_others(plugin_dist, caplog):
    dist = plugin_dist / "broken_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metadg.algorithms]\nbroken = no_such_module_xyz:Thing\n")
    reg: Registry[type] = Registry("algorithm", "metadg.algorithms")
    assert "toy" in reg.names() and "broken" not in reg.names()
    assert "could not load algorithm plugin 'broken'" in caplog.text

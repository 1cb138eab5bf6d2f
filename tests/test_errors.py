"""The CLI's error boundary: one line and a documented exit status for every error; crash reports for bugs."""

from __future__ import annotations

import pytest
import yaml

from metadg import cli
from metadg.errors import EXIT_CRASH, EXIT_FAILED, EXIT_STOPPED, EXIT_USAGE


@pytest.fixture
def crash_dir(tmp_path, monkeypatch):
    folder = tmp_path / "crashes"
    monkeypatch.setenv("METADG_CRASH_DIR", str(folder))
    return folder


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_unexpected_exception_prints_one_line_and_writes_a_crash_report(crash_dir, monkeypatch, capsys):
    def boom():
        raise RuntimeError("something internal\nwith a second line")

    monkeypatch.setattr(cli, "cmd_list", boom)
    assert cli.main(["list"]) == EXIT_CRASH
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("error: unexpected RuntimeError: something internal […] (crash report: ")
    reports = list(crash_dir.iterdir())
    assert len(reports) == 1 and str(reports[0]) in line
    text = reports[0].read_text()
    assert "command: metadg list" in text and "torch " in text and "Traceback" in text and "in boom" in text
    with pytest.raises(RuntimeError, match="something internal"):  # --debug shows the real thing
        cli.main(["--debug", "list"])


def test_a_crash_report_that_cannot_be_written_still_gives_one_line(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("METADG_CRASH_DIR", str(blocker / "sub"))  # under a regular file: mkdir fails
    monkeypatch.setattr(cli, "cmd_list", lambda: 1 / 0)
    assert cli.main(["list"]) == EXIT_CRASH
    assert "no crash report could be written; rerun with --debug" in _one_line(capsys.readouterr().err)


def test_ctrl_c_outside_training_is_one_line_and_status_130(crash_dir, monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_list", interrupted)
    assert cli.main(["list"]) == EXIT_STOPPED
    assert _one_line(capsys.readouterr().err) == "interrupted"
    assert not crash_dir.exists()


def test_an_os_error_is_an_expected_failure(crash_dir, monkeypatch, capsys):
    def disk_full():
        raise OSError(28, "No space left on device", "/runs/x/results.json")

    monkeypatch.setattr(cli, "cmd_list", disk_full)
    assert cli.main(["list"]) == EXIT_FAILED
    assert "No space left on device: '/runs/x/results.json'" in _one_line(capsys.readouterr().err)
    assert not crash_dir.exists()


@pytest.mark.parametrize("change, expected", [
    ({"train": {"device": "banana"}}, "train.device"),
    ({"tracking": {"enabled": False, "uri": "foo://host/x"}}, "unknown tracking URI scheme 'foo'"),
])
def test_bad_values_are_usage_errors_naming_the_key(tmp_path, tiny_config, crash_dir, capsys, change, expected):
    for section, values in change.items():
        tiny_config[section].update(values)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config))
    assert cli.main(["run", str(path), "--dry-run"]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert expected in line and str(path) in line


def test_control_characters_in_yaml_or_an_override_name_the_file_and_line(tmp_path, tiny_config, crash_dir, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(tiny_config) + "note: bell\x07\n")
    assert cli.main(["run", str(path), "--dry-run"]) == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    n = path.read_text().count("\n")
    assert f"{path}:{n}: invalid YAML: character U+0007 is not allowed" in line
    path.write_text(yaml.safe_dump(tiny_config))
    assert cli.main(["run", str(path), "--dry-run", "-o", "train.steps=\x1b[2J"]) == EXIT_USAGE
    assert "override 'train.steps=\\x1b[2J': value:1: invalid YAML: character U+001B" in _one_line(capsys.readouterr().err)
    assert not crash_dir.exists()

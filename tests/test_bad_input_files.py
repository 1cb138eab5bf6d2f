"""Safe reads of files a user names: regular files only, size caps per kind, decoding errors with file and line."""

from __future__ import annotations

import os
import shutil

import pytest
import yaml

from metadg.config import ConfigError, load_config
from metadg.config.files import MAX_CONFIG_BYTES, read_capped
from metadg.engine.checkpoint import CheckpointError, read_checkpoint
from metadg.tracking.journal import JournalError, read_journal

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _experiment(tmp_path, tiny_config, **extra):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({**tiny_config, **extra}))
    return path


def test_an_include_of_dev_zero_is_refused_not_read(tmp_path, tiny_config):
    with pytest.raises(ConfigError, match=r"/dev/zero: config file is a device or socket, not a regular file"):
        load_config(_experiment(tmp_path, tiny_config, include=["/dev/zero"]))


def test_a_fifo_as_include_does_not_hang(tmp_path, tiny_config, fifo):
    with pytest.raises(ConfigError, match=rf"{fifo}: config file is a FIFO, not a regular file"):
        load_config(_experiment(tmp_path, tiny_config, include=[str(fifo)]))


def test_a_folder_as_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path}: config file is a folder"):
        load_config(tmp_path)


def test_a_config_over_the_cap_is_refused_with_the_cap(tmp_path, tiny_config):
    big = tmp_path / "big.yaml"
    with big.open("w") as fh:
        fh.write("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"big\.yaml: config file is larger than 16 MiB"):
        load_config(_experiment(tmp_path, tiny_config, include=[str(big)]))


def test_a_config_that_is_not_utf8_names_the_line(tmp_path, tiny_config):
    path = _experiment(tmp_path, tiny_config)
    path.write_bytes(path.read_bytes() + b"note: caf\xe9\n")
    n = path.read_bytes().count(b"\n")
    with pytest.raises(ConfigError, match=rf"exp\.yaml:{n}: config file is not UTF-8 text \(byte 0xe9\)"):
        load_config(path)


def test_a_fifo_as_checkpoint_metadata_does_not_hang(tmp_path, run_dir, fifo):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "checkpoints" / "best", ckpt)
    (ckpt / "meta.json").unlink()
    fifo.rename(ckpt / "meta.json")
    with pytest.raises(CheckpointError, match=r"meta\.json: checkpoint metadata is a FIFO"):
        read_checkpoint(ckpt)


def test_a_fifo_as_journal_or_protocol_is_refused(tmp_path, tiny_config, fifo):
    with pytest.raises(JournalError, match="tracking journal is a FIFO"):
        read_journal(fifo)
    tiny_config["task"]["eval"] = {"x": {"name": "list", "path": str(fifo)}}
    from metadg.config import build_experiment

    task = build_experiment(tiny_config).task.build()
    with pytest.raises(Exception, match="list file is a FIFO, not a regular file"):
        task.eval_sets()


def test_read_capped_reads_regular_files_whole(tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 100)
    assert read_capped(tmp_path / "f", "file", 100) == b"x" * 100
    with pytest.raises(OSError, match="larger than"):
        read_capped(tmp_path / "f", "file", 99)

"""Property-based fuzzing of the public entry points: one-line error or documented counted skip, never a traceback.

Bounded example counts (the suite stays fast); each property names what may come out.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metadg.cli import main
from metadg.config import ConfigError, build_experiment, plain_name
from metadg.engine.checkpoint import CheckpointError, read_checkpoint
from metadg.errors import EXIT_FAILED, EXIT_USAGE
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tasks.audio.loading import AudioError, load_audio
from metadg.tracking.journal import JournalError, read_journal

# Derandomized: CI sees the same 40 examples per property every run (a failure reproduces); no example
# database is written into the checkout. Raise max_examples locally to search further.
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=20))
documents = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                         max_leaves=12)
KEYS = ["seed", "name", "task", "task.eval", "task.crop_samples", "model", "model.backbone", "adapter", "adapter.r",
        "algorithm", "algorithm.name", "loss", "train", "train.steps", "train.lr", "train.device", "train.selection",
        "tracking", "tracking.uri", "include", "vars", "output_dir"]


def _cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(list(argv))
    return status, err.getvalue()


def _assert_one_line(status: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert status in (0, EXIT_FAILED, EXIT_USAGE), (status, err)  # never 70: no unexpected exception
    if status:
        assert len([line for line in err.splitlines() if line.startswith("error: ")]) == 1, err


@FUZZ
@given(key=st.sampled_from(KEYS), value=documents)
def test_any_value_at_any_config_key_is_accepted_or_one_line(tiny_config, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        data = yaml.safe_load(yaml.safe_dump(tiny_config))
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        status, err = _cli("run", str(path), "--dry-run")
        _assert_one_line(status, err)
        assert sorted(p.name for p in Path(tmp).iterdir()) == ["exp.yaml"]  # a dry run writes nothing


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_as_a_config_file_is_one_line(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(text, encoding="utf-8")
        _assert_one_line(*_cli("run", str(path), "--dry-run"))


@FUZZ
@given(override=st.text(max_size=60))
def test_any_override_is_accepted_or_one_line(tiny_config, override):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exp.yaml"
        path.write_text(yaml.safe_dump(tiny_config))
        _assert_one_line(*_cli("run", str(path), "--dry-run", f"--override={override}"))  # (= : argparse takes any text)


@FUZZ
@given(name=st.text(max_size=30))
def test_an_eval_set_name_is_a_plain_name_or_refused(tiny_config, name):
    cfg = copy.deepcopy(tiny_config)  # the fixture is shared by every example
    cfg["task"]["eval"] = {name: cfg["task"]["eval"]["all"]}
    try:
        exp = build_experiment(cfg)
    except ConfigError:
        return
    (kept,) = exp.task.cfg.eval
    assert plain_name(kept, "x") == kept and "/" not in kept and ".." != kept and "\x00" not in kept


@FUZZ
@given(lines=st.lists(st.text(max_size=40), max_size=8), policy=st.sampled_from(["raise", "skip"]))
def test_any_list_file_gives_utterances_or_one_corpus_error(tiny_config, lines, policy):
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "a.wav"
        import soundfile as sf

        sf.write(audio, np.sin(np.arange(4000) / 5.0).astype(np.float32), 16000)
        listing = Path(tmp) / "list.csv"
        listing.write_bytes(("path,label\n" + "\n".join(lines) + "\n").encode("utf-8", errors="replace"))
        cfg = copy.deepcopy(tiny_config)
        cfg["task"]["eval"] = {"x": {"name": "list", "path": str(listing), "on_error": policy}}
        try:
            task = build_experiment(cfg).task.build()
            utts = task.eval_sets()["x"]
        except (ConfigError, CorpusError) as exc:  # one message that names the list file
            assert str(listing) in str(exc), str(exc)
            return
        assert all(u for u in utts.ids) and len(utts.labels) == len(utts.ids)


def _wav_header(n_channels: int, rate: int, bits: int, data_len: int) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, n_channels, rate, rate * n_channels * bits // 8, n_channels * bits // 8, bits)
    return b"RIFF" + struct.pack("<I", 36 + data_len) + b"WAVEfmt " + struct.pack("<I", 16) + fmt + b"data" + \
        struct.pack("<I", data_len)


@FUZZ
@given(channels=st.integers(0, 70000), rate=st.integers(0, 2**32 - 1), bits=st.sampled_from([0, 1, 8, 16, 24, 32, 64]),
       claimed=st.integers(0, 2**32 - 1), body=st.binary(max_size=400))
def test_any_wav_header_gives_finite_audio_or_an_audio_error(channels, rate, bits, claimed, body):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        try:
            path.write_bytes(_wav_header(channels % 65536, rate, bits, claimed) + body)
        except struct.error:
            return
        try:
            wave = load_audio(path)
        except AudioError as exc:
            assert str(path) in str(exc)
            return
        assert wave.dtype == np.float32 and wave.ndim == 1 and wave.size and np.isfinite(wave).all()


@FUZZ
@given(samples=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_any_sample_values_give_finite_audio_or_an_audio_error(samples):
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.wav"
        sf.write(path, np.asarray(samples, dtype=np.float32), 16000, subtype="FLOAT")
        try:
            wave = load_audio(path)
        except AudioError:
            return
        assert np.isfinite(wave).all()


@FUZZ
@given(meta=st.one_of(st.text(max_size=200), documents.map(lambda d: json.dumps(d, allow_nan=True))),
       weights=st.binary(max_size=200))
def test_any_checkpoint_folder_is_read_or_refused_with_a_checkpoint_error(meta, weights):
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "best"
        ckpt.mkdir()
        (ckpt / "meta.json").write_bytes(meta.encode("utf-8", errors="replace"))
        (ckpt / "trainable.safetensors").write_bytes(weights)
        with pytest.raises(CheckpointError):
            read_checkpoint(ckpt)  # random bytes are never a valid safetensors file with a valid metadg meta


@FUZZ
@given(lines=st.lists(st.one_of(st.text(max_size=80), documents.map(json.dumps)), max_size=6))
def test_any_journal_is_read_or_refused_with_a_journal_error(lines):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tracking.jsonl"
        path.write_bytes("\n".join(lines).encode("utf-8", errors="replace"))
        try:
            runs = read_journal(path)
        except JournalError:
            return
        assert isinstance(runs, list)

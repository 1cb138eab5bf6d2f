"""The `list` corpus and the shared bad-input policy of on-disk corpora."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from metadg.config import ConfigError, validate_plugin
from metadg.tasks.spoof.corpora import CORPORA
from metadg.tasks.spoof.file_corpus import CorpusError, normalize_label


def tone(path, seconds=0.25, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


def read(spec):
    return validate_plugin(CORPORA, {"name": "list", **spec}, "task.train").build().utterances()


@pytest.fixture
def corpus(tmp_path):
    tone(tmp_path / "audio" / "a.wav")
    tone(tmp_path / "audio" / "b.flac")
    tone(tmp_path / "audio" / "c.wav", sr=22050)
    return tmp_path


def write_list(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(("text", "label"), [("bonafide", 1), ("bona-fide", 1), ("Bona fide", 1), ("real", 1), ("genuine", 1),
                                             ("spoof", 0), ("fake", 0), ("deepfake", 0), ("SPOOF", 0)])
def test_label_strings_are_normalised(text, label):
    assert normalize_label(text) == label


def test_list_reads_paths_labels_and_attributes(corpus):
    path = write_list(corpus / "list.csv", ["path,label,attack,speaker", "audio/a.wav,bona-fide,-,s1",
                                            "audio/b.flac,fake,A01,s2", "audio/c.wav,spoof,A02,s1"])
    utts = read({"path": str(path)})
    assert utts.ids == ["audio/a", "audio/b", "audio/c"]
    assert utts.labels.tolist() == [1, 0, 0]
    assert utts.attr("attack") == ["-", "A01", "A02"] and utts.attr("corpus") == ["list"] * 3
    wave = utts.load(2)  # 22.05 kHz file, resampled
    assert wave.dtype == np.float32 and abs(len(wave) - 4000) <= 2
    filtered = read({"path": str(path), "filters": {"attack": ["A02"]}})
    assert filtered.ids == ["audio/a", "audio/c"]


def test_tsv_and_id_column(corpus):
    path = write_list(corpus / "list.tsv", ["id\tfile\tkey", "u1\taudio/a.wav\treal", "u2\taudio/b.flac\tfake"])
    utts = read({"path": str(path), "path_column": "file", "label_column": "key", "id_column": "id"})
    assert utts.ids == ["u1", "u2"] and utts.labels.tolist() == [1, 0]


BAD = {
    "unknown label": ("audio/a.wav,maybe", r"list\.csv:2: unknown label 'maybe'"),
    "missing file": ("audio/nope.wav,spoof", r"list\.csv:2: audio file .*nope\.wav not found"),
    "path outside root": ("../../../etc/passwd,spoof", r"list\.csv:2: .*escapes the corpus root"),
    "malformed line": ("audio/a.wav,spoof,extra,fields", r"list\.csv:2: expected 2 fields, got 4"),
}


@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_rows_raise_naming_file_and_line(corpus, reason):
    line, pattern = BAD[reason]
    path = write_list(corpus / "list.csv", ["path,label", line, "audio/b.flac,spoof"])
    with pytest.raises(CorpusError, match=pattern):
        read({"path": str(path)})


def test_bad_rows_are_skipped_and_counted(corpus, caplog):
    lines = ["path,label"] + [BAD[r][0] for r in sorted(BAD)] + ["audio/a.wav,bonafide", "audio/b.flac,spoof", "audio/a.wav,\x00\x01garbage"]
    path = write_list(corpus / "list.csv", lines)
    plugin = validate_plugin(CORPORA, {"name": "list", "path": str(path), "on_error": "skip"}, "c")
    reader = plugin.build()
    with caplog.at_level(logging.WARNING):
        utts = reader.utterances()
    assert utts.ids == ["audio/a", "audio/b"]
    assert dict(reader.skips.counts) == {"unknown label": 2, "missing file": 1, "path outside root": 1, "malformed line": 1}
    assert "skipped 5" in caplog.text


def test_missing_list_and_bad_policy_are_clear(tmp_path):
    with pytest.raises(CorpusError, match="nowhere.csv not found"):
        read({"path": str(tmp_path / "nowhere.csv")})
    with pytest.raises(ConfigError, match=r"task\.train\.on_error"):
        validate_plugin(CORPORA, {"name": "list", "path": "x.csv", "on_error": "ignore"}, "task.train")

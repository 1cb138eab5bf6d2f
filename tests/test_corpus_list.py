"""The `list` corpus and the shared bad-input policy of on-disk corpora."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from metadg.config import ConfigError, validate_plugin
from metadg.tasks.audio.corpus import CORPORA
from metadg.tasks.audio.file_corpus import CorpusError
from metadg.tasks.spoof.labels import normalize_label


def tone(path, seconds=0.25, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)


def read(spec):
    return validate_plugin(CORPORA, {"name": "list", **spec}, "task.train").build().utterances(normalize_label)


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
        utts = reader.utterances(normalize_label)
    assert utts.ids == ["audio/a", "audio/b"]
    assert dict(reader.skips.counts) == {"unknown label": 1, "missing file": 1, "path outside root": 1, "malformed line": 2}
    assert "skipped 5" in caplog.text


def test_missing_list_and_bad_policy_are_clear(tmp_path):
    with pytest.raises(CorpusError, match="nowhere.csv not found"):
        read({"path": str(tmp_path / "nowhere.csv")})
    with pytest.raises(ConfigError, match=r"task\.train\.on_error"):
        validate_plugin(CORPORA, {"name": "list", "path": "x.csv", "on_error": "ignore"}, "task.train")


@pytest.fixture
def lazy_bad(corpus):
    """Files that index fine (they exist) but fail when opened: corrupt, silent, NaN, empty."""
    (corpus / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    sf.write(corpus / "audio" / "silent.wav", np.zeros(4000, dtype=np.float32), 16000)
    sf.write(corpus / "audio" / "nan.wav", np.full(4000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    sf.write(corpus / "audio" / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    lines = ["path,label,attack", "audio/a.wav,bonafide,-", "audio/c.wav,bonafide,-", "audio/b.flac,spoof,A01",
             "audio/corrupt.wav,spoof,A01", "audio/silent.wav,bonafide,-", "audio/nan.wav,spoof,A01", "audio/empty.wav,spoof,A01"]
    return write_list(corpus / "list.csv", lines)


def test_unusable_audio_raises_naming_the_file(lazy_bad):
    from metadg.tasks.audio.loading import AudioError

    utts = read({"path": str(lazy_bad)})
    for name, message in [("corrupt", "unreadable audio"), ("silent", "silent"), ("nan", "NaN or infinite"), ("empty", "empty audio")]:
        index = utts.ids.index(f"audio/{name}")
        with pytest.raises(AudioError, match=rf"{name}\.wav: {message}"):
            utts.load(index)


def test_unusable_audio_is_skipped_and_counted_when_asked(lazy_bad):
    from metadg.engine.scoring import score_utterances
    from metadg.tasks.spoof.task import SpoofDetection, SpoofDetectionConfig
    from metadg.engine.batcher import DomainBatcher
    from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack

    utts = read({"path": str(lazy_bad), "on_error": "skip"})
    batcher = DomainBatcher(utts, partition=partition_by_attack(utts), policy=SharedBonafide(0.5), batch_per_domain=4, crop_samples=800, seed=0)
    for _ in range(10):  # every draw ends up on a usable file
        batch = batcher.next()["A01"]
        assert torch.isfinite(batch.inputs).all() and batch.inputs.abs().amax(1).min() > 0
    assert set(utts.skipped) <= {"unreadable audio", "silent audio", "non-finite samples", "empty audio"}

    fresh = read({"path": str(lazy_bad), "on_error": "skip"})

    class Const(torch.nn.Module):
        def forward(self, x, lengths=None):
            return torch.stack([-x.mean(1), x.mean(1)], 1)

    scores = score_utterances(Const(), fresh, progress=False)
    bad = [i for i, u in enumerate(fresh.ids) if u.split("/")[1] in ("corrupt", "silent", "nan", "empty")]
    assert np.isnan(scores[bad]).all() and np.isfinite(np.delete(scores, bad)).all()
    assert dict(fresh.skipped) == {"unreadable audio": 1, "silent audio": 1, "non-finite samples": 1, "empty audio": 1}
    task = SpoofDetection(SpoofDetectionConfig(train={"name": "synthetic"}, dev={"name": "synthetic"}))
    metrics = task.metrics(scores, fresh)
    assert metrics["skipped"] == 4 and 0 <= metrics["eer"] <= 1


def test_workers_count_skips_in_the_main_process(lazy_bad):
    from metadg.engine.batcher import DomainBatcher
    from metadg.tasks.spoof.sampling import SharedBonafide, partition_by_attack

    utts = read({"path": str(lazy_bad), "on_error": "skip"})
    batcher = DomainBatcher(utts, partition=partition_by_attack(utts), policy=SharedBonafide(0.5), batch_per_domain=4, crop_samples=800, seed=0)
    steps = batcher.iterate(num_workers=2)
    for _ in range(6):
        batch = next(steps)["A01"]
        assert torch.isfinite(batch.inputs).all() and batch.inputs.abs().amax(1).min() > 0
    assert sum(utts.skipped.values()) >= 1  # counted here although the workers hit the bad files
    assert set(utts.skipped) <= {"unreadable audio", "silent audio", "non-finite samples", "empty audio"}

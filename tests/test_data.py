"""Data plumbing: crop/pad, audio loading, corpus filters, utterance subsets."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import soundfile as sf

from metadg.config import validate_plugin
from metadg.tasks.base import Utterances, fit_length
from metadg.tasks.audio.loading import AudioError, load_audio
from metadg.tasks.audio.corpus import CORPORA


def test_fit_length_repeat_pads_short_clips():
    out = fit_length(np.arange(3, dtype=np.float32), 7)
    assert out.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_fit_length_random_crop_is_a_contiguous_window():
    wave = np.arange(100, dtype=np.float32)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        out = fit_length(wave, 10, rng)
        assert np.array_equal(out, np.arange(out[0], out[0] + 10))
        starts.add(int(out[0]))
    assert len(starts) > 1
    assert fit_length(wave, 10).tolist() == list(range(10))  # no rng: from the start
    with pytest.raises(ValueError, match="empty"):
        fit_length(np.zeros(0, dtype=np.float32), 10)


def test_load_audio_mixes_down_and_resamples(tmp_path):
    t = np.arange(8000) / 8000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.zeros_like(t)], axis=1) * 0.5
    path = tmp_path / "a.wav"
    sf.write(path, stereo, 8000)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(wave.shape[0] - 16000) <= 2
    assert 0.2 < np.abs(wave).max() < 0.3  # mono mix-down halves the one-channel tone


def test_load_audio_errors_name_the_file(tmp_path):
    with pytest.raises(AudioError, match="nope.flac: file not found"):
        load_audio(tmp_path / "nope.flac")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF0000WAVEjunkjunk")
    with pytest.raises(AudioError, match="bad.wav: unreadable audio"):
        load_audio(bad)


def test_corpus_filters_keep_bonafide(synthetic_cache):
    spec = {"name": "synthetic", "split": "eval", "cache_dir": synthetic_cache, "duration_s": 0.5,
            "n_bonafide": 20, "n_per_attack": 10, "filters": {"attack": ["codec"]}}
    utts = validate_plugin(CORPORA, spec, "c").build().utterances()
    attacks = set(utts.attrs["attack"])
    assert attacks == {"-", "codec"}
    assert int((utts.labels == 1).sum()) == 20 and int((utts.labels == 0).sum()) == 10


def test_subset_is_a_picklable_view():
    waves = np.arange(12, dtype=np.float32).reshape(4, 3)
    utts = Utterances(["a", "b", "c", "d"], [1, 0, 0, 1], {"attack": ["-", "x", "y", "-"]}, waves.__getitem__)
    sub = utts.subset([2, 0])
    assert sub.ids == ["c", "a"] and sub.labels.tolist() == [0, 1] and sub.attr("attack") == ["y", "-"]
    assert sub.load(0).tolist() == waves[2].tolist()
    # Data-loader workers receive loaders by pickling; a lambda would fail here.
    revived = pickle.loads(pickle.dumps(sub.loader))
    assert revived(0).tolist() == waves[2].tolist()
    with pytest.raises(KeyError, match="no attribute 'codec'"):
        utts.attr("codec")

"""Tests for the synthetic acoustic-scenes corpus (metadg.tasks.classification.synthetic_scenes)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadg.tasks.classification import synthetic_scenes as scn
from metadg.tasks.classification.synthetic_scenes import (
    ALL_DEVICES,
    CLASSES,
    SAMPLE_RATE,
    SEEN_DEVICES,
    UNSEEN_DEVICES,
    apply_device,
    generate_split,
    load_split,
    synthesize_scene,
)

SMALL = {"n_per_class": 2, "duration_s": 0.25}


def _same(a: scn.ScenesSplit, b: scn.ScenesSplit) -> bool:
    return (np.array_equal(a.waves, b.waves) and np.array_equal(a.labels, b.labels) and a.ids == b.ids
            and a.scenes == b.scenes and a.devices == b.devices and a.locations == b.locations)


def _band_db(waves: np.ndarray, n_bands: int = 32) -> np.ndarray:
    """(clips, frames, bands) log band energies in dB from 512-sample Hann frames, hop 256."""
    frames = np.lib.stride_tricks.sliding_window_view(waves, 512, axis=1)[:, ::256] * np.hanning(512)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2
    bands = np.stack([b.sum(-1) for b in np.array_split(power[..., 1:], n_bands, axis=-1)], axis=-1)
    return 10 * np.log10(bands + 1e-12)


def test_constants():
    assert SAMPLE_RATE == 16000 and len(CLASSES) >= 6 and len(set(CLASSES)) == len(CLASSES)
    assert SEEN_DEVICES == ("a", "b", "c", "s1", "s2", "s3") and UNSEEN_DEVICES == ("s4", "s5", "s6")
    assert ALL_DEVICES == SEEN_DEVICES + UNSEEN_DEVICES


def test_determinism_and_disjoint_splits():
    a, b = generate_split("train", seed=1, **SMALL), generate_split("train", seed=1, **SMALL)
    assert _same(a, b)
    assert not np.array_equal(a.waves, generate_split("train", seed=2, **SMALL).waves)
    waves = {s: generate_split(s, seed=1, **SMALL).waves for s in ("train", "dev", "eval")}
    for x, y in itertools.combinations(waves, 2):
        # No clip of one split reappears in another.
        assert not (waves[x][:, None, :] == waves[y][None, :, :]).all(axis=2).any()


def test_clip_independent_of_split_size_and_devices():
    full = generate_split("eval", seed=5, **SMALL)
    part = generate_split("eval", seed=5, n_per_class=1, duration_s=0.25, devices=["s5"])
    rows = [k for k, (d, i) in enumerate(zip(full.devices, full.ids)) if d == "s5" and i.endswith("-0000-s5")]
    np.testing.assert_array_equal(part.waves, full.waves[rows])
    assert part.locations == [full.locations[k] for k in rows]


@pytest.mark.parametrize("split, expected", [("train", SEEN_DEVICES), ("dev", SEEN_DEVICES), ("eval", ALL_DEVICES)])
def test_split_structure(split, expected):
    data = generate_split(split, seed=3, **SMALL)
    n = 2 * len(CLASSES) * len(expected)
    assert data.waves.shape == (n, 4000) and data.waves.dtype == np.float32
    assert np.isfinite(data.waves).all() and np.abs(data.waves).max() <= 1.0
    assert (np.sqrt((data.waves ** 2).mean(axis=1)) > 1e-3).all()  # no silent clips
    assert data.labels.dtype == np.int64 and data.labels.shape == (n,)
    assert len(set(data.ids)) == len(data.scenes) == len(data.devices) == len(data.locations) == n
    assert [CLASSES[k] for k in data.labels] == data.scenes
    assert all(loc.startswith("loc-") for loc in data.locations)
    counts = {(s, d): 0 for s in CLASSES for d in expected}
    for s, d in zip(data.scenes, data.devices):
        counts[(s, d)] += 1
    assert set(counts.values()) == {2}
    if split == "eval":
        assert set(UNSEEN_DEVICES) <= set(data.devices)
    else:
        assert not set(data.devices) & set(UNSEEN_DEVICES)


def test_unknown_names_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="did you mean 'park'"):
        synthesize_scene("parc", rng, 100)
    with pytest.raises(ValueError, match="valid devices"):
        apply_device("s9", np.ones(100), rng)
    with pytest.raises(ValueError, match="did you mean 'eval'"):
        generate_split("evl", **SMALL)
    with pytest.raises(ValueError, match="unknown device"):
        generate_split("train", devices=["a", "zz"], **SMALL)
    with pytest.raises(ValueError):
        generate_split("train", devices="a", **SMALL)


def test_cache_roundtrip(tmp_path, monkeypatch):
    first = load_split("dev", cache_dir=tmp_path, seed=4, **SMALL)
    assert len(list(tmp_path.glob("scenes_dev_*.npz"))) == 1 and not list(tmp_path.glob("*.tmp"))

    def fail(*args, **kwargs):
        raise AssertionError("cache miss: generate_split called again")

    monkeypatch.setattr(scn, "generate_split", fail)
    assert _same(first, load_split("dev", cache_dir=tmp_path, seed=4, **SMALL))
    with pytest.raises(AssertionError, match="cache miss"):  # other arguments, other cache entry
        load_split("dev", cache_dir=tmp_path, seed=5, **SMALL)


def test_corrupt_cache_is_regenerated(tmp_path):
    expected = load_split("train", cache_dir=tmp_path, **SMALL)
    (path,) = tmp_path.glob("scenes_train_*.npz")
    path.write_bytes(b"not a zip file")
    assert _same(expected, load_split("train", cache_dir=tmp_path, **SMALL))


def test_devices_are_distinct_fixed_channels():
    clean = [synthesize_scene(s, np.random.default_rng(k), 8000) for k, s in enumerate(CLASSES)]

    def mean_spectrum(device: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        db = _band_db(np.stack([apply_device(device, x, rng) for x in clean])).mean(axis=(0, 1))
        return db - db.mean()  # shape only: recording level is random by design

    first = {d: mean_spectrum(d, 0) for d in ALL_DEVICES}
    # The channel is fixed per device: another recording rng only changes noise and level.
    within = max(np.abs(first[d] - mean_spectrum(d, 1)).max() for d in ALL_DEVICES)
    between = min(np.abs(first[a] - first[b]).max() for a, b in itertools.combinations(ALL_DEVICES, 2))
    assert between > 2.0 and between > 3 * within


@pytest.mark.parametrize("seed", [0, 1])
def test_unseen_devices_are_harder(seed):
    def features(waves: np.ndarray) -> np.ndarray:
        db = _band_db(waves)
        return np.concatenate([db.mean(axis=1), db.std(axis=1)], axis=1)

    train = generate_split("train", seed=seed, n_per_class=5, duration_s=0.5)
    test = generate_split("eval", seed=seed, n_per_class=4, duration_s=0.5)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(features(train.waves), train.labels)
    correct = clf.predict(features(test.waves)) == test.labels
    seen = np.isin(test.devices, SEEN_DEVICES)
    seen_acc, unseen_acc = correct[seen].mean(), correct[~seen].mean()
    assert seen_acc > 2 / len(CLASSES), seen_acc
    assert unseen_acc < seen_acc - 0.1, (seen_acc, unseen_acc)

"""Tests for the synthetic speech-deepfake corpus (metadg.tasks.spoof.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from metadg.tasks.spoof import synthetic as syn
from metadg.tasks.spoof.synthetic import (
    ALL_ATTACKS,
    BONAFIDE,
    SAMPLE_RATE,
    SEEN_ATTACKS,
    UNSEEN_ATTACKS,
    generate_split,
    load_split,
    synthesize_bonafide,
    synthesize_spoof,
)

SMALL = {"n_bonafide": 3, "n_per_attack": 2, "duration_s": 0.25}


def _same(a: syn.SyntheticSplit, b: syn.SyntheticSplit) -> bool:
    return (np.array_equal(a.waves, b.waves) and np.array_equal(a.labels, b.labels)
            and a.ids == b.ids and a.attacks == b.attacks and a.speakers == b.speakers)


def test_constants():
    assert SAMPLE_RATE == 16000 and BONAFIDE == "-"
    assert ALL_ATTACKS == SEEN_ATTACKS + UNSEEN_ATTACKS
    assert not set(SEEN_ATTACKS) & set(UNSEEN_ATTACKS)
    assert SEEN_ATTACKS == ("griffin_lim", "lpc_vocoder", "concat", "smooth_envelope")


@pytest.mark.parametrize("split, expected", [("train", SEEN_ATTACKS), ("dev", SEEN_ATTACKS), ("eval", ALL_ATTACKS)])
def test_split_structure(split, expected):
    data = generate_split(split, seed=3, **SMALL)
    n = 3 + 2 * len(expected)
    assert data.waves.shape == (n, 4000) and data.waves.dtype == np.float32
    assert np.isfinite(data.waves).all() and np.abs(data.waves).max() <= 1.0
    assert (np.sqrt((data.waves**2).mean(axis=1)) > 1e-3).all()  # no silent rows
    assert data.labels.dtype == np.int64 and data.labels.shape == (n,)
    assert len(data.ids) == len(set(data.ids)) == len(data.attacks) == len(data.speakers) == n
    assert all(i.startswith(f"SYN_{split}_") for i in data.ids)
    assert all(s.startswith(f"SYN_{split}_spk") for s in data.speakers)
    for label, attack in zip(data.labels, data.attacks):
        assert (label == 1) == (attack == BONAFIDE)
    assert data.attacks.count(BONAFIDE) == 3
    assert {a: data.attacks.count(a) for a in expected} == dict.fromkeys(expected, 2)


def test_custom_attacks_and_empty_classes():
    data = generate_split("eval", n_bonafide=0, n_per_attack=3, duration_s=0.1, attacks=["codec"])
    assert data.attacks == ["codec"] * 3 and (data.labels == 0).all()
    empty = generate_split("train", n_bonafide=0, n_per_attack=0, duration_s=0.1)
    assert empty.waves.shape == (0, 1600) and empty.ids == []


def test_determinism_and_disjoint_draws():
    a, b = generate_split("train", seed=1, **SMALL), generate_split("train", seed=1, **SMALL)
    assert _same(a, b)
    other_seed = generate_split("train", seed=2, **SMALL)
    assert not np.array_equal(a.waves, other_seed.waves)
    splits = {s: generate_split(s, seed=1, **SMALL).waves for s in ("train", "dev", "eval")}
    for x, y in [("train", "dev"), ("train", "eval"), ("dev", "eval")]:
        # No utterance of one split reappears in another.
        assert not (splits[x][:, None, :] == splits[y][None, :, :]).all(axis=2).any()


def test_utterance_independent_of_other_class_sizes():
    small = generate_split("eval", seed=4, n_bonafide=2, n_per_attack=1, duration_s=0.2)
    large = generate_split("eval", seed=4, n_bonafide=3, n_per_attack=2, duration_s=0.2)
    np.testing.assert_array_equal(small.waves[:2], large.waves[:2])
    for k, attack in enumerate(ALL_ATTACKS):
        np.testing.assert_array_equal(small.waves[2 + k], large.waves[3 + 2 * k])
        assert small.attacks[2 + k] == large.attacks[3 + 2 * k] == attack


@pytest.mark.parametrize("attack", (None,) + ALL_ATTACKS)
def test_synthesize_single_utterance(attack):
    def make(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return synthesize_bonafide(rng, 3000) if attack is None else synthesize_spoof(attack, rng, 3000)

    x = make(7)
    assert x.shape == (3000,) and x.dtype == np.float32 and np.isfinite(x).all()
    assert 0 < np.abs(x).max() <= 1.0
    np.testing.assert_array_equal(x, make(7))
    assert not np.array_equal(x, make(8))


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="valid attacks: griffin_lim, .*neural_like"):
        synthesize_spoof("wavenet", np.random.default_rng(0), 100)
    with pytest.raises(ValueError, match="'wavenet'.*codec"):
        generate_split("eval", n_bonafide=1, n_per_attack=1, attacks=["codec", "wavenet"])
    with pytest.raises(ValueError, match="valid splits: train, dev, eval"):
        generate_split("test", n_bonafide=1, n_per_attack=1)
    with pytest.raises(ValueError, match="valid splits"):
        load_split("valid", cache_dir=".", n_bonafide=1, n_per_attack=1)
    with pytest.raises(ValueError, match="duplicate"):
        generate_split("eval", n_bonafide=1, n_per_attack=1, attacks=["codec", "codec"])


def test_cache_roundtrip(tmp_path, monkeypatch):
    first = load_split("dev", cache_dir=tmp_path / "c", seed=5, **SMALL)
    files = list((tmp_path / "c").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz" and files[0].name.startswith("synthetic_dev_")
    assert _same(first, generate_split("dev", seed=5, **SMALL))

    def fail(*args, **kwargs):
        raise AssertionError("cache was not used")

    monkeypatch.setattr(syn, "generate_split", fail)
    second = load_split("dev", cache_dir=str(tmp_path / "c"), seed=5, **SMALL)
    assert _same(first, second) and isinstance(second.ids[0], str)
    with pytest.raises(AssertionError, match="cache was not used"):  # other arguments, other file
        load_split("dev", cache_dir=tmp_path / "c", seed=6, **SMALL)


def test_corrupt_cache_is_regenerated(tmp_path):
    first = load_split("train", cache_dir=tmp_path, **SMALL)
    (path,) = tmp_path.glob("*.npz")
    path.write_bytes(path.read_bytes()[:200])  # as if a foreign process truncated it
    again = load_split("train", cache_dir=tmp_path, **SMALL)
    assert _same(first, again)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten, no temp files left
    assert _same(first, load_split("train", cache_dir=tmp_path, **SMALL))


def _stats(waves: np.ndarray) -> dict[str, np.ndarray]:
    """Simple per-utterance statistics that expose individual attack artifacts."""
    freqs, _, spec = signal.stft(waves.astype(np.float64), fs=SAMPLE_RATE, nperseg=512, noverlap=384, axis=-1)
    power = np.abs(spec) ** 2
    logp = np.log(power + 1e-12)
    frames = np.lib.stride_tricks.sliding_window_view(waves.astype(np.float64), 400, axis=1)[:, ::160]
    rms = np.sqrt((frames**2).mean(-1))
    crest = np.abs(frames).max(-1) / (rms + 1e-9)
    loud = rms > 0.3 * rms.max(axis=1, keepdims=True)
    # Upsampling images mirror the spectrum about fs/2: compare 100-1000 Hz with its mirror.
    low = logp[:, 3:32] - logp[:, 3:32].mean(axis=1, keepdims=True)
    high = logp[:, 253:224:-1] - logp[:, 253:224:-1].mean(axis=1, keepdims=True)
    mirror = (low * high).sum(1) / np.sqrt((low**2).sum(1) * (high**2).sum(1))
    energy = power.sum(axis=1)
    voiced = energy > 0.1 * energy.max(axis=1, keepdims=True)
    return {
        "high_band_db": 10 * np.log10(power[:, freqs > 4500].sum((1, 2)) / power.sum((1, 2))),
        "flux": np.abs(np.diff(logp, axis=-1)).mean((1, 2)),
        "crest": np.array([c[m].mean() for c, m in zip(crest, loud)]),
        "mirror": np.array([c[m].mean() for c, m in zip(mirror, voiced)]),
    }


def test_attacks_leave_measurable_artifacts():
    data = generate_split("eval", seed=11, n_bonafide=24, n_per_attack=24)
    stats = _stats(data.waves)
    attacks = np.array(data.attacks)

    def auc(attack: str, name: str) -> float:
        """AUC of 'statistic is larger for the attack than for bona fide'."""
        mask = (attacks == attack) | (attacks == BONAFIDE)
        return roc_auc_score(attacks[mask] == attack, stats[name][mask])

    assert auc("codec", "high_band_db") < 0.15  # band limited to < 4 kHz
    med = {a: np.median(stats["high_band_db"][attacks == a]) for a in (BONAFIDE, "codec")}
    assert med["codec"] < med[BONAFIDE] - 10
    assert auc("neural_like", "mirror") > 0.9  # spectral images of the upsampler
    assert auc("concat", "flux") > 0.85  # spectral jumps at unit joins
    assert auc("griffin_lim", "crest") > 0.8  # inconsistent random-phase frames


def _features(waves: np.ndarray) -> np.ndarray:
    """Per-utterance mean/std/mean-|delta| of band-averaged log power spectra (96 dims)."""
    _, _, spec = signal.stft(waves, nperseg=512, noverlap=384, axis=-1)
    logp = np.log(np.abs(spec[:, 1:257]) ** 2 + 1e-10)
    bands = logp.reshape(len(waves), 32, 8, -1).mean(axis=2)
    return np.concatenate([bands.mean(-1), bands.std(-1), np.abs(np.diff(bands, axis=-1)).mean(-1)], axis=1)


def _eer(labels: np.ndarray, scores: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(labels, scores)
    i = int(np.argmin(np.abs(1 - tpr - fpr)))
    return float((fpr[i] + 1 - tpr[i]) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_unseen_attacks_are_harder(seed):
    train = generate_split("train", seed=seed, n_bonafide=60, n_per_attack=30)
    test = generate_split("eval", seed=seed, n_bonafide=60, n_per_attack=30)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(_features(train.waves), train.labels)
    scores = clf.decision_function(_features(test.waves))
    attacks = np.array(test.attacks)
    bona = attacks == BONAFIDE
    eer = {}
    for group in (SEEN_ATTACKS, UNSEEN_ATTACKS):
        mask = bona | np.isin(attacks, group)
        eer[group] = _eer(test.labels[mask], scores[mask])
    assert eer[SEEN_ATTACKS] < 0.2, eer
    assert eer[UNSEEN_ATTACKS] > eer[SEEN_ATTACKS] + 0.1, eer

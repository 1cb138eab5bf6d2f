"""LFCC-LCNN: the LFCC front-end against a NumPy/SciPy computation, the layer count, any length, training."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft
import torch

from metadg.config import build_experiment, validate_plugin
from metadg.models import build_model
from metadg.models.lcnn import LCNNConfig, MaxFeatureMap, SpectralFrontend
from metadg.registry import HEADS, MODELS


def numpy_lfcc(wave: np.ndarray, fl=320, hop=160, n_fft=1024, n_filt=20, max_freq=0.5, sr=16000) -> np.ndarray:
    """LFCC written out frame by frame (pre-emphasis, centred zero-padded frames, periodic Hamming window)."""
    x = np.concatenate([wave[:1], wave[1:] - 0.97 * wave[:-1]]).astype(np.float64)
    x = np.pad(x, n_fft // 2)
    window = np.zeros(n_fft)
    left = (n_fft - fl) // 2
    window[left:left + fl] = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(fl) / fl)
    n_frames = 1 + (len(x) - n_fft) // hop
    power = np.stack([np.abs(np.fft.rfft(x[i * hop:i * hop + n_fft] * window)) ** 2 for i in range(n_frames)])
    n_bins = int(max_freq * (n_fft // 2 + 1))
    power = power[:, :n_bins]
    f = (sr / 2) * np.linspace(0, max_freq, n_bins)
    edges = np.linspace(0, f[-1], n_filt + 2)
    bank = np.zeros((n_bins, n_filt))
    for j in range(n_filt):  # trimf(f, [a, b, c])
        a, b, c = edges[j:j + 3]
        bank[:, j] = np.clip(np.minimum((f - a) / (b - a), (c - f) / (c - b)), 0, None)
    eps = np.finfo(np.float32).eps
    lfcc = scipy.fft.dct(np.log10(power @ bank + eps), type=2, norm="ortho", axis=-1)
    lfcc[:, 0] = np.log10((power / n_fft).sum(-1) + eps)

    def delta(v):
        p = np.concatenate([v[:1], v, v[-1:]])
        return p[2:] - p[:-2]

    d = delta(lfcc)
    return np.concatenate([lfcc, d, delta(d)], axis=-1)


def test_lfcc_equals_a_frame_by_frame_computation():
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    got = SpectralFrontend(LCNNConfig())(torch.from_numpy(wave)[None].double()).squeeze(0).numpy()
    want = numpy_lfcc(wave)
    assert got.shape == want.shape == (51, 60)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_max_feature_map_takes_the_larger_half():
    x = torch.tensor([[1.0, -2.0, 0.5, 3.0]]).reshape(1, 4, 1, 1)
    assert MaxFeatureMap()(x).flatten().tolist() == [1.0, 3.0]


def _model(**cfg):
    backbone = validate_plugin(MODELS, {"name": "lcnn", **cfg}, "model.backbone")
    return build_model(backbone, validate_plugin(HEADS, "linear", "model.head"))


def test_the_layers_are_the_baselines():
    convs = [(1, 64, 5), (32, 64, 1), (32, 96, 3), (48, 96, 1), (48, 128, 3), (64, 128, 1), (64, 64, 3), (32, 64, 1),
             (32, 64, 3)]
    conv_params = sum(o * i * k * k + o for i, o, k in convs)
    lstm = 2 * 2 * (4 * 48 * (96 + 48) + 2 * 4 * 48)  # two BLSTM layers of 2 × 48 units over 96 features
    assert sum(p.numel() for p in _model().parameters()) == conv_params + lstm + (96 * 2 + 2)


@pytest.mark.parametrize("frontend", ["lfcc", "mel"])
def test_any_length_gives_one_embedding(frontend):
    model = _model(frontend=frontend).eval()
    with torch.no_grad():
        for n in (100, 2401, 16000, 40123):
            logits, emb = model(torch.randn(2, n), with_embedding=True)
            assert logits.shape == (2, 2) and emb.shape == (2, 96) and torch.isfinite(logits).all()


def test_lcnn_trains_with_the_engine(tiny_config):
    from metadg.engine.trainer import Trainer

    tiny_config.update({"model": {"backbone": {"name": "lcnn"}, "head": {"name": "linear"}}, "adapter": {"name": "full"}})
    tiny_config["train"].update({"steps": 2, "eval_every": 2, "batch_per_domain": 2})
    result = Trainer(build_experiment(tiny_config)).fit()
    assert 0.0 <= result.eval["all"]["eer"] <= 1.0

"""Batched torch RawBoost: exact LnL parity with NumPy, per-row seeding, ISD/SSI properties, distributions, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from metadg.tasks.spoof import rawboost_batched
from metadg.tasks.spoof.rawboost import RawBoostConfig, lnl_convolutive, rawboost
from metadg.tasks.spoof.rawboost_batched import BatchedRawBoost, device_seed, host_rng

SR = 16000
# Loose on purpose: the outputs are fixed by fixed seeds, so this only has to flag a real mismatch.
KS_P = 1e-3


def _speechlike(n: int, seed: int, peak: float | None = None) -> np.ndarray:
    """Harmonics of a random f0 under a syllable-rate envelope plus a little noise, random level."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    f0 = rng.uniform(90, 250)
    x = sum(np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 12) if k * f0 < 7000)
    env = 0.55 - 0.45 * np.cos(2 * np.pi * rng.uniform(3, 6) * t + rng.uniform(0, 2 * np.pi))
    x = x * env + 0.02 * rng.standard_normal(n)
    return (x * (peak or rng.uniform(0.1, 0.6)) / np.abs(x).max()).astype(np.float32)


def _batch(n_rows: int, n: int, first_seed: int = 0, peak: float | None = None) -> torch.Tensor:
    return torch.from_numpy(np.stack([_speechlike(n, first_seed + i, peak) for i in range(n_rows)]))


def _cfg(algo: int, **kw: float) -> RawBoostConfig:
    return RawBoostConfig(algo=algo, **kw)


# ---------------------------------------------------------------- algorithm 1: exact parity


LNL_CFG = {"min_gain_db": -4.0, "max_gain_db": 3.0, "min_nonlinear_bias_db": 2.0, "max_nonlinear_bias_db": 12.0}


@pytest.mark.parametrize("n", [64600, 8001, 300, 1])  # 300 and 1: shorter than a notch bank (up to 491 taps)
def test_lnl_equals_numpy_for_the_same_host_generator(n):
    cfg = _cfg(1, **LNL_CFG)
    aug = BatchedRawBoost(cfg)
    for seed in (0, 7, 2**40 + 3):
        x = _speechlike(n, seed, peak=0.8)
        got = aug(torch.from_numpy(x)[None], [seed])[0].numpy()
        want = lnl_convolutive(x, host_rng(seed), cfg, SR)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_lnl_parity_holds_row_by_row_inside_a_batch():
    cfg = _cfg(1, num_orders=3, num_bands=4, max_fir_order=60, **LNL_CFG)
    x = _batch(6, 4001)
    seeds = [11, 3, 99, 0, 5, 123456789]
    got = BatchedRawBoost(cfg)(x, seeds).numpy()
    for i, s in enumerate(seeds):
        np.testing.assert_allclose(got[i], lnl_convolutive(x[i].numpy(), host_rng(s), cfg, SR), rtol=0, atol=1e-5)


def test_host_and_device_seeds_are_deterministic_and_distinct():
    assert host_rng(5).random() == host_rng(5).random()
    assert host_rng(5).random() != np.random.default_rng(5).random()  # not the crop's generator
    assert host_rng(5).random() != host_rng(6).random()
    d = [device_seed(s) for s in range(50)]
    assert len(set(d)) == 50 and all(0 <= v < 2**63 for v in d)
    assert device_seed(5) == device_seed(5)
    assert device_seed(2**63 - 1) >= 0


# ---------------------------------------------------------------- per-row seeding


@pytest.mark.parametrize("algo", range(1, 9))
def test_a_row_depends_only_on_its_wave_and_seed(algo):
    aug = BatchedRawBoost(_cfg(algo))
    x = _batch(5, 3000)
    seeds = [40, 41, 42, 43, 44]
    full = aug(x, seeds)
    # Not bitwise: another batch can trim the banks to another common length before the FFT.
    np.testing.assert_allclose(aug(x[2:3], [42])[0].numpy(), full[2].numpy(), rtol=0, atol=1e-6)
    flipped = aug(x.flip(0), seeds[::-1])
    np.testing.assert_allclose(flipped.flip(0).numpy(), full.numpy(), rtol=0, atol=1e-6)
    # The same row among other waves and seeds, in a batch of another size.
    other = torch.cat([_batch(3, 3000, first_seed=100), x[2:3]])
    np.testing.assert_allclose(aug(other, [1, 2, 3, 42])[3].numpy(), full[2].numpy(), rtol=0, atol=1e-6)
    assert torch.equal(aug(x, seeds), full)
    moved = aug(x, [s + 1000 for s in seeds])
    assert all(not torch.allclose(moved[i], full[i], atol=1e-4) for i in range(5))
    twin = aug(torch.stack([x[0], x[0]]), [7, 8])  # same wave, different seeds
    assert not torch.allclose(twin[0], twin[1], atol=1e-4)


@pytest.mark.parametrize("algo", [1, 4, 8])
def test_chunking_over_rows_does_not_change_the_result(algo, monkeypatch):
    aug = BatchedRawBoost(_cfg(algo))
    x = _batch(5, 2000)
    whole = aug(x, range(5))
    monkeypatch.setattr(rawboost_batched, "_CPU_BUFFER_BYTES", 1)  # one row per FFT chunk
    np.testing.assert_allclose(aug(x, range(5)).numpy(), whole.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("algo", range(1, 9))
def test_shape_dtype_device_kept_and_input_untouched(algo):
    x = _batch(3, 2500).double()
    before = x.clone()
    y = BatchedRawBoost(_cfg(algo))(x, [1, 2, 3])
    assert y.shape == x.shape and y.dtype == torch.float32 and y.device == x.device
    assert torch.isfinite(y).all()
    assert torch.equal(x, before)
    assert not torch.allclose(y, x.float(), atol=1e-4)
    strided = torch.from_numpy(np.ascontiguousarray(x.numpy().T)).T  # a non-contiguous view
    np.testing.assert_allclose(BatchedRawBoost(_cfg(algo))(strided, [1, 2, 3]).numpy(), y.numpy(), atol=1e-6)


def test_empty_batch_and_repr():
    aug = BatchedRawBoost(_cfg(5))
    assert aug(torch.zeros(0, 100), []).shape == (0, 100)
    assert repr(aug) == "BatchedRawBoost(algo=5, sr=16000)"
    assert repr(BatchedRawBoost(_cfg(3), sr=8000)) == "BatchedRawBoost(algo=3, sr=8000)"


# ---------------------------------------------------------------- ISD


def test_isd_hits_at_most_p_percent_uniformly_and_leaves_the_rest_equal():
    p, g, n, rows = 10.0, 2.0, 4000, 300
    x = _batch(1, n, peak=0.3).expand(rows, n)  # |y| <= 3|x| < 1: no peak rescaling
    y = BatchedRawBoost(_cfg(2, max_impulse_percent=p, impulse_gain=g))(x, range(rows))
    changed = y != x
    frac = changed.double().mean(1).numpy()
    assert frac.max() <= p / 100
    assert torch.equal(y[~changed], x[~changed])
    assert torch.all((y - x).abs() <= g * x.abs() + 1e-7)
    # beta ~ U(0, P): the fraction hit is ~U(0, P/100), mean P/200 with standard error (P/100)/sqrt(12 rows).
    se = p / 100 / np.sqrt(12 * rows)
    assert abs(frac.mean() - p / 200) < 4 * se + 1 / n
    assert stats.kstest(frac, "uniform", args=(0, p / 100)).pvalue > KS_P
    # Positions are uniform over the clip: each quarter gets a quarter of all hits.
    hits = changed.sum(0).double()
    quarters = hits.reshape(4, -1).sum(1) / hits.sum()
    assert torch.all((quarters - 0.25).abs() < 4 * np.sqrt(0.25 * 0.75 / float(hits.sum())))


def test_isd_zero_percent_is_the_identity_and_loud_input_is_peak_limited():
    x = _batch(4, 2000, peak=0.5)
    assert torch.equal(BatchedRawBoost(_cfg(2, max_impulse_percent=0))(x, range(4)), x)
    loud = _batch(20, 2000, peak=0.99)
    y = BatchedRawBoost(_cfg(2, max_impulse_percent=50))(loud, range(20))
    assert y.abs().amax() <= 1.0 + 1e-6
    assert (y.abs().amax(1) > 0.999).all()  # only divided down where the peak went over 1


# ---------------------------------------------------------------- SSI


def _snr_db(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return 10 * np.log10((x64 ** 2).sum(-1) / ((y64 - x64) ** 2).sum(-1))


def test_ssi_snr_lies_in_range_and_matches_the_numpy_distribution():
    lo, hi, rows, n = 5.0, 25.0, 150, 3000
    cfg = _cfg(3, min_snr_db=lo, max_snr_db=hi)
    x = _batch(rows, n).numpy()
    got = _snr_db(x, BatchedRawBoost(cfg)(torch.from_numpy(x), range(rows)).numpy())
    want = np.array([_snr_db(x[i], rawboost(x[i], 3, np.random.default_rng(i), cfg=cfg)) for i in range(rows)])
    assert got.min() >= lo - 1e-3 and got.max() <= hi + 1e-3
    assert stats.ks_2samp(got, want).pvalue > KS_P
    assert abs(got.mean() - want.mean()) < 4 * (hi - lo) / np.sqrt(12) * np.sqrt(2 / rows)
    at_20 = BatchedRawBoost(_cfg(3, min_snr_db=20, max_snr_db=20))
    fixed = _snr_db(x[:5], at_20(torch.from_numpy(x[:5]), range(5)).numpy())
    np.testing.assert_allclose(fixed, 20.0, atol=1e-3)


def test_ssi_noise_is_coloured_by_a_notch_bank():
    # One wide notch at 4 kHz: the added noise must lose that band relative to white noise.
    cfg = _cfg(3, num_bands=1, min_freq_hz=4000, max_freq_hz=4000, min_bandwidth_hz=1000, max_bandwidth_hz=1000,
               min_fir_order=99, max_fir_order=99)
    x = _batch(8, 8000)
    noise = (BatchedRawBoost(cfg)(x, range(8)) - x).double()
    psd = (torch.fft.rfft(noise).abs() ** 2).mean(0)
    f = torch.fft.rfftfreq(8000, 1 / SR)
    assert psd[(f > 3800) & (f < 4200)].mean() < 0.01 * psd[(f > 1000) & (f < 3000)].mean()


# ---------------------------------------------------------------- distributions vs NumPy


def _stats(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    rms = np.sqrt((y64 ** 2).mean(-1) / (x64 ** 2).mean(-1))
    xc, yc = x64 - x64.mean(-1, keepdims=True), y64 - y64.mean(-1, keepdims=True)
    corr = (xc * yc).sum(-1) / np.sqrt((xc ** 2).sum(-1) * (yc ** 2).sum(-1))
    return {"rms ratio": rms, "correlation": corr}


@pytest.mark.parametrize("algo", range(1, 9))
def test_output_statistics_agree_with_numpy_in_distribution(algo):
    rows, n = 100, 4000
    x = _batch(rows, n, first_seed=1000).numpy()
    got = BatchedRawBoost(_cfg(algo))(torch.from_numpy(x), range(rows)).numpy()
    want = np.stack([rawboost(x[i], algo, np.random.default_rng(10_000 + i)) for i in range(rows)])
    for name, (a, b) in {k: (v, _stats(x, want)[k]) for k, v in _stats(x, got).items()}.items():
        p = stats.ks_2samp(a, b).pvalue
        assert p > KS_P, f"algo {algo}: {name} distributions differ (KS p = {p:.2e})"
    if algo in (1, 2, 5, 8):  # the ones that end in a peak limit
        loud = _batch(10, n, peak=0.99)
        assert BatchedRawBoost(_cfg(algo))(loud, range(10)).abs().amax() <= 1.0 + 1e-6
    if algo == 1:
        assert np.abs(got.mean(-1)).max() < 1e-6  # mean-removed


# ---------------------------------------------------------------- bad input


def test_algo_zero_and_bad_sample_rate_are_refused():
    with pytest.raises(ValueError, match=r"rawboost\.algo.*algo=0"):
        BatchedRawBoost(_cfg(0))
    with pytest.raises(ValueError, match="sample rate"):
        BatchedRawBoost(_cfg(5), sr=0)


@pytest.mark.parametrize("waves, seeds, exc, match", [
    (np.zeros((2, 10), np.float32), [1, 2], TypeError, "torch.Tensor"),
    (torch.zeros(10), [1], ValueError, "2-D"),
    (torch.zeros(1, 2, 10), [1], ValueError, "2-D"),
    (torch.zeros(2, 10, dtype=torch.int16), [1, 2], TypeError, "floating-point"),
    (torch.zeros(2, 0), [1, 2], ValueError, "T = 0"),
    (torch.zeros(2, 10), [1], ValueError, "1 seeds for a batch of 2"),
    (torch.zeros(2, 10), 3, TypeError, "one seed per row"),
    (torch.tensor([[0.0, 1.0], [0.0, float("nan")]]), [1, 2], ValueError, r"NaN or infinite samples in rows \[1\]"),
    (torch.tensor([[float("inf"), 1.0]]), [1], ValueError, r"rows \[0\]"),
    (torch.zeros(1, 10), [-1], ValueError, "0 <= seed < 2"),
    (torch.zeros(1, 10), [2**63], ValueError, "0 <= seed < 2"),
    (torch.zeros(1, 10), [True], TypeError, "integers"),
    (torch.zeros(1, 10), [1.5], TypeError, "integers"),
    (torch.zeros(1, 10), ["3"], TypeError, "integers"),
])
def test_bad_input_gets_a_clear_error(waves, seeds, exc, match):
    with pytest.raises(exc, match=match):
        BatchedRawBoost(_cfg(4))(waves, seeds)


def test_numpy_and_tensor_integer_seeds_are_accepted():
    aug = BatchedRawBoost(_cfg(5))
    x = _batch(2, 1000)
    ref = aug(x, [3, 4])
    assert torch.equal(aug(x, np.array([3, 4])), ref)
    assert torch.equal(aug(x, torch.tensor([3, 4])), ref)


# ---------------------------------------------------------------- CUDA (skipped without one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_keeps_the_device_and_lnl_matches_the_cpu():
    x = _batch(4, 16000)
    lnl = BatchedRawBoost(_cfg(1, **LNL_CFG))
    # LnL draws only on the host, so the device must not change its result.
    np.testing.assert_allclose(lnl(x.cuda(), range(4)).cpu().numpy(), lnl(x, range(4)).numpy(), atol=1e-5)
    for algo in range(2, 9):
        aug = BatchedRawBoost(_cfg(algo))
        y = aug(x.cuda(), range(4))
        assert y.is_cuda and y.dtype == torch.float32 and torch.isfinite(y).all()
        np.testing.assert_allclose(aug(x[1:2].cuda(), [1])[0].cpu().numpy(), y[1].cpu().numpy(), atol=1e-6)

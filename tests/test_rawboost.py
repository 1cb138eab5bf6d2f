"""RawBoost augmentation: shapes, determinism, SNR/impulse/filter properties, errors, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import signal

from metadg.tasks.spoof.rawboost import (
    RawBoost,
    RawBoostConfig,
    bandstop_firs,
    isd_impulsive,
    lnl_convolutive,
    rawboost,
    ssi_additive,
)

SR = 16000
ALL_ALGOS = range(1, 9)


def _speechy(n: int = 8000, peak: float = 0.3, seed: int = 0) -> np.ndarray:
    """A few harmonics plus noise, scaled to `peak`: enough spectral content for every algorithm."""
    t = np.arange(n) / SR
    rng = np.random.default_rng(seed)
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k for k, f in enumerate([180, 360, 900, 2500], 1))
    x = x + 0.1 * rng.standard_normal(n)
    return (peak * x / np.abs(x).max()).astype(np.float32)


def _snr_db(x: np.ndarray, y: np.ndarray) -> float:
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    return 20 * np.log10(np.linalg.norm(x64) / np.linalg.norm(y64 - x64))


def _tone(freq: float, n: int = 8000, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(n) / SR)).astype(np.float32)


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_every_algo_keeps_shape_dtype_and_changes_the_wave(algo):
    x = _speechy()
    y = rawboost(x, algo, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.isfinite(y).all()
    assert not np.array_equal(y, x)


def test_algo_0_returns_input_unchanged_as_a_copy():
    x = _speechy()
    y = rawboost(x, 0, np.random.default_rng(1))
    assert y.dtype == np.float32 and np.array_equal(y, x)
    y[0] += 1.0
    assert x[0] != y[0]  # not aliased: a loader may modify it in place


@pytest.mark.parametrize("algo", ALL_ALGOS)
def test_same_seed_same_output_other_seed_differs(algo):
    x = _speechy()
    a = rawboost(x, algo, np.random.default_rng(5))
    b = rawboost(x, algo, np.random.default_rng(5))
    c = rawboost(x, algo, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_global_numpy_rng_is_never_touched():
    x = _speechy()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for algo in ALL_ALGOS:
        rawboost(x, algo, np.random.default_rng(0))
    assert np.array_equal(np.random.get_state()[1], before)


@pytest.mark.parametrize("algo", [4, 5, 6, 7])
def test_series_algos_apply_the_steps_in_order(algo):
    x = _speechy().astype(np.float64)
    cfg = RawBoostConfig()
    steps = {1: lambda v, r: lnl_convolutive(v, r, cfg, SR), 2: lambda v, r: isd_impulsive(v, r, cfg),
             3: lambda v, r: ssi_additive(v, r, cfg, SR)}
    order = {4: (1, 2, 3), 5: (1, 2), 6: (1, 3), 7: (2, 3)}[algo]
    rng = np.random.default_rng(9)
    expected = x
    for s in order:
        expected = steps[s](expected, rng)
    assert np.array_equal(rawboost(x, algo, np.random.default_rng(9)), expected.astype(np.float32))


def test_algo_8_is_the_normalised_sum_of_1_and_2_in_parallel():
    x = _speechy(peak=0.9).astype(np.float64)
    cfg = RawBoostConfig()
    rng = np.random.default_rng(4)
    summed = lnl_convolutive(x, rng, cfg, SR) + isd_impulsive(x, rng, cfg)
    expected = summed / max(1.0, np.abs(summed).max())
    y = rawboost(x, 8, np.random.default_rng(4))
    assert np.allclose(y, expected, atol=1e-6)
    assert np.abs(y).max() <= 1.0 + 1e-6


def test_ssi_noise_snr_lies_in_the_configured_range():
    x = _speechy()
    snrs = np.array([_snr_db(x, rawboost(x, 3, np.random.default_rng(s))) for s in range(40)])
    assert snrs.min() >= 10 - 0.05 and snrs.max() <= 40 + 0.05
    assert snrs.min() < 15 and snrs.max() > 35  # drawn across the range, not a fixed level


def test_ssi_narrowed_snr_gives_that_snr():
    x = _speechy()
    cfg = RawBoostConfig(min_snr_db=20, max_snr_db=20)
    for s in range(5):
        assert _snr_db(x, rawboost(x, 3, np.random.default_rng(s), cfg=cfg)) == pytest.approx(20, abs=0.02)


def test_isd_changes_at_most_p_percent_and_leaves_the_rest_equal():
    x = _speechy(peak=0.3)  # |y| <= 3|x| < 1, so no peak normalisation rescales the untouched samples
    cap = int(x.size * 10 / 100)
    counts = []
    for s in range(20):
        y = rawboost(x, 2, np.random.default_rng(s))
        changed = y != x
        counts.append(changed.sum())
        assert changed.sum() <= cap
        assert np.array_equal(y[~changed], x[~changed])
        assert np.all(np.abs(y - x) <= 2.0 * np.abs(x) + 1e-7)  # |g * x * U * U| <= g|x|
    assert max(counts) > cap // 2  # beta ~ U(0, P): some draws change many samples
    small = RawBoostConfig(max_impulse_percent=1)
    y = rawboost(x, 2, np.random.default_rng(0), cfg=small)
    assert (y != x).sum() <= x.size // 100


def test_isd_loud_input_is_peak_limited_to_one():
    x = _speechy(peak=0.99)
    for s in range(5):
        assert np.abs(rawboost(x, 2, np.random.default_rng(s))).max() <= 1.0 + 1e-6


def test_lnl_output_is_zero_mean_and_peak_limited():
    for peak in (0.3, 1.0):
        x = _speechy(peak=peak)
        for s in range(4):
            y = rawboost(x, 1, np.random.default_rng(s)).astype(np.float64)
            assert abs(y.mean()) < 1e-6
            assert np.abs(y).max() <= 1.0 + 1e-6
    loud = RawBoostConfig(num_orders=1, min_gain_db=20, max_gain_db=20)  # +20 dB pushes the peak above 1
    y = rawboost(_speechy(peak=1.0), 1, np.random.default_rng(0), cfg=loud).astype(np.float64)
    assert np.abs(y).max() == pytest.approx(1.0, abs=1e-6)
    assert abs(y.mean()) < 1e-6


def test_lnl_first_order_at_0_db_is_linear_and_never_adds_energy():
    x = _speechy(peak=0.5)
    lin = RawBoostConfig(num_orders=1)
    for s in range(4):
        y = rawboost(x, 1, np.random.default_rng(s), cfg=lin).astype(np.float64)
        half = rawboost(x * 0.5, 1, np.random.default_rng(s), cfg=lin).astype(np.float64)
        assert np.allclose(half, 0.5 * y, atol=1e-6)
        assert np.linalg.norm(y) <= np.linalg.norm(x.astype(np.float64)) * (1 + 1e-4)  # peak |H| = 0 dB
    quiet = RawBoostConfig(num_orders=1, min_gain_db=-20, max_gain_db=-20)
    y = rawboost(x, 1, np.random.default_rng(0), cfg=quiet).astype(np.float64)
    assert np.linalg.norm(y) <= 0.1 * np.linalg.norm(x.astype(np.float64)) * (1 + 1e-4)
    # The default five orders add x^2..x^5 terms, so halving the input no longer halves the output.
    y = rawboost(x, 1, np.random.default_rng(0)).astype(np.float64)
    half = rawboost(x * 0.5, 1, np.random.default_rng(0)).astype(np.float64)
    assert not np.allclose(half, 0.5 * y, atol=1e-4)


def test_notch_removes_its_band_keeps_others_and_is_delay_compensated():
    cfg = RawBoostConfig(num_orders=1, num_bands=1, min_freq_hz=1000, max_freq_hz=1000,
                         min_bandwidth_hz=1000, max_bandwidth_hz=1000, min_fir_order=99, max_fir_order=99)
    inner = slice(200, -200)  # away from the filter's start-up and tail
    stopped = rawboost(_tone(1000), 1, np.random.default_rng(0), cfg=cfg)
    assert np.abs(stopped[inner]).max() < 0.01 * 0.5  # > 40 dB down at the notch centre
    x = _tone(4000)
    passed = rawboost(x, 1, np.random.default_rng(0), cfg=cfg)
    # A 4 kHz tone has a 4-sample period: a delay error of one sample would leave a residual near 0.7.
    assert np.abs(passed[inner] - x[inner]).max() < 0.01


def test_filter_bank_peak_gain_is_the_drawn_gain_and_linear_phase_centred():
    # Short FIRs: their raw cascade peaks well below 1, so a missing peak normalisation would show.
    n, c = 4001, 2000
    for gain_db in (0.0, -6.0):
        cfg = RawBoostConfig(num_orders=1, min_fir_order=10, max_fir_order=12, min_gain_db=gain_db,
                             max_gain_db=gain_db)
        for s in range(3):
            x = np.zeros(n, dtype=np.float32)
            x[c] = 0.5
            y = rawboost(x, 1, np.random.default_rng(s), cfg=cfg).astype(np.float64)
            kernel = (y - y[0]) / 0.5  # far from the impulse y is just minus the removed mean
            assert np.abs(np.fft.rfft(kernel, 1 << 15)).max() == pytest.approx(10 ** (gain_db / 20), rel=2e-3)
            assert np.allclose(kernel[c + 1:c + 60], kernel[c - 1:c - 60:-1], atol=1e-6)  # symmetric about c
    # Five orders with banks of different lengths must still share one centre (x^k of an impulse is
    # an impulse at the same place), or the orders would be summed misaligned.
    x = np.zeros(n, dtype=np.float32)
    x[c] = 0.9
    for s in range(3):
        y = rawboost(x, 1, np.random.default_rng(s)).astype(np.float64)
        assert np.allclose(y[c + 1:c + 600], y[c - 1:c - 600:-1], atol=1e-6)


def test_higher_orders_are_attenuated_by_the_nonlinear_bias():
    # One fixed 1 kHz notch for every order: only the gains are random. x = a sin(3 kHz) makes
    # x^2 = a^2/2 (1 - cos(6 kHz)), so the 6 kHz amplitude divided by a^2/2 is the order-2 gain.
    cfg = RawBoostConfig(num_orders=2, num_bands=1, min_freq_hz=1000, max_freq_hz=1000, min_bandwidth_hz=1000,
                         max_bandwidth_hz=1000, min_fir_order=99, max_fir_order=99)
    amp, n = 0.5, 8000
    t = np.arange(n) / SR
    inner = slice(200, -200)
    basis = np.stack([np.sin(2 * np.pi * 3000 * t), np.cos(2 * np.pi * 3000 * t),
                      np.sin(2 * np.pi * 6000 * t), np.cos(2 * np.pi * 6000 * t), np.ones(n)], axis=1)[inner]
    gains = []
    for s in range(20):
        y = rawboost((amp * np.sin(2 * np.pi * 3000 * t)).astype(np.float32), 1, np.random.default_rng(s), cfg=cfg)
        coef = np.linalg.lstsq(basis, y[inner].astype(np.float64), rcond=None)[0]
        assert np.hypot(coef[0], coef[1]) == pytest.approx(amp, rel=0.01)  # order 1 at 0 dB
        gains.append(np.hypot(coef[2], coef[3]) / (amp**2 / 2))
    gains_db = 20 * np.log10(gains)
    assert gains_db.min() >= -20 - 0.2 and gains_db.max() <= -5 + 0.2  # [0, 0] dB shifted by [-5, -20]
    assert gains_db.min() < -15 and gains_db.max() > -10


def test_bandstop_design_matches_scipy_firwin():
    taps = np.array([11, 51, 99])
    f1, f2 = np.array([50.0, 3000.0, 7200.0]), np.array([450.0, 3800.0, 7999.999])
    h = bandstop_firs(taps, f1, f2, SR)
    for i, c in enumerate(taps):
        ref = signal.firwin(int(c), [f1[i], f2[i]], window="hamming", fs=SR)
        assert np.allclose(h[i, :c] / h[i, :c].sum(), ref, atol=1e-12)
        assert np.all(h[i, c:] == 0)


@pytest.mark.parametrize("algo", range(0, 9))
def test_silent_input_gives_finite_silence(algo):
    y = rawboost(np.zeros(4000, dtype=np.float32), algo, np.random.default_rng(0))
    assert np.isfinite(y).all() and np.all(y == 0)


def test_low_sample_rate_with_default_band_edges_still_works():
    y = rawboost(_speechy(), 4, np.random.default_rng(0), sr=8000)  # maxF 8 kHz > Nyquist 4 kHz
    assert np.isfinite(y).all()


@pytest.mark.parametrize("bad", [9, -1, 2.5, True, "5"])
def test_unknown_algo_is_a_value_error_listing_valid_ones(bad):
    with pytest.raises(ValueError, match=r"unknown RawBoost algo.*valid: 0 \(off\).*8 \("):
        rawboost(_speechy(), bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown RawBoost algo"):
        RawBoost(bad)


@pytest.mark.parametrize(
    ("wave", "message"),
    [
        (np.zeros((2, 100), dtype=np.float32), r"1-D waveform, got shape \(2, 100\)"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.array([0.1, np.nan], dtype=np.float32), "NaN"),
    ],
)
def test_bad_waveforms_are_value_errors_naming_the_problem(wave, message):
    with pytest.raises(ValueError, match=message):
        rawboost(wave, 1, np.random.default_rng(0))


def test_config_defaults_are_the_reference_recipe_and_documented():
    cfg = RawBoostConfig()
    assert (cfg.algo, cfg.num_orders, cfg.num_bands) == (0, 5, 5)
    assert (cfg.min_freq_hz, cfg.max_freq_hz, cfg.min_bandwidth_hz, cfg.max_bandwidth_hz) == (20, 8000, 100, 1000)
    assert (cfg.min_fir_order, cfg.max_fir_order, cfg.min_gain_db, cfg.max_gain_db) == (10, 100, 0, 0)
    assert (cfg.min_nonlinear_bias_db, cfg.max_nonlinear_bias_db) == (5, 20)
    assert (cfg.max_impulse_percent, cfg.impulse_gain, cfg.min_snr_db, cfg.max_snr_db) == (10, 2, 10, 40)
    assert all(f.description for f in RawBoostConfig.model_fields.values())


def test_config_rejects_inverted_ranges_unknown_keys_and_bad_algo():
    with pytest.raises(ValidationError, match="min_snr_db"):
        RawBoostConfig(min_snr_db=30, max_snr_db=20)
    with pytest.raises(ValidationError, match="snr_max"):
        RawBoostConfig(snr_max=20)
    with pytest.raises(ValidationError, match="algo"):
        RawBoostConfig(algo=9)


def test_rawboost_object_pickles_and_reproduces():
    cfg = RawBoostConfig(algo=5, min_snr_db=15, max_impulse_percent=5)
    aug = RawBoost.from_config(cfg)
    clone = pickle.loads(pickle.dumps(aug))
    assert clone.algo == 5 and clone.cfg == cfg and clone.sr == SR
    x = _speechy()
    assert np.array_equal(aug(x, np.random.default_rng(11)), clone(x, np.random.default_rng(11)))
    assert np.array_equal(clone(x, np.random.default_rng(11)), rawboost(x, 5, np.random.default_rng(11), cfg=cfg))

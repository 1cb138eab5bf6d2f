"""RawBoost waveform augmentation (Tak et al., ICASSP 2022): convolutive, impulsive and coloured noise."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator
from scipy import fft as sfft

from metadg.config import StrictModel

ALGOS = {
    0: "off",
    1: "LnL convolutive",
    2: "ISD impulsive",
    3: "SSI stationary coloured noise",
    4: "1 -> 2 -> 3 in series",
    5: "1 -> 2 in series",
    6: "1 -> 3 in series",
    7: "2 -> 3 in series",
    8: "1 || 2 in parallel, summed and normalised",
}
_SERIES = {1: (1,), 2: (2,), 3: (3,), 4: (1, 2, 3), 5: (1, 2), 6: (1, 3), 7: (2, 3)}


class RawBoostConfig(StrictModel):
    """RawBoost recipe; defaults are those of the reference implementation (SSL_Anti-spoofing)."""

    algo: int = Field(0, ge=0, le=8, description="0 off; 1 LnL, 2 ISD, 3 SSI, 4 1+2+3, 5 1+2, 6 1+3, 7 2+3, 8 1||2")
    num_orders: int = Field(5, ge=1, description="LnL: powers x, x^2, ..., x^N filtered and summed (N_f)")
    num_bands: int = Field(5, ge=1, description="notch filters cascaded in each random filter bank (nBands)")
    min_freq_hz: float = Field(20.0, gt=0, description="lowest notch centre frequency in Hz (minF)")
    max_freq_hz: float = Field(8000.0, gt=0, description="highest notch centre frequency in Hz (maxF)")
    min_bandwidth_hz: float = Field(100.0, gt=0, description="narrowest notch bandwidth in Hz (minBW)")
    max_bandwidth_hz: float = Field(1000.0, gt=0, description="widest notch bandwidth in Hz (maxBW)")
    min_fir_order: int = Field(10, ge=2, description="smallest FIR length per notch, made odd (minCoeff)")
    max_fir_order: int = Field(100, ge=2, description="largest FIR length per notch, made odd (maxCoeff)")
    min_gain_db: float = Field(0.0, description="lowest filter-bank gain in dB for the linear term (minG)")
    max_gain_db: float = Field(0.0, description="highest filter-bank gain in dB for the linear term (maxG)")
    min_nonlinear_bias_db: float = Field(5.0, description="LnL: dB off min_gain_db for orders >= 2 (minBiasLinNonLin)")
    max_nonlinear_bias_db: float = Field(20.0, description="LnL: dB off max_gain_db for orders >= 2 (maxBiasLinNonLin)")
    max_impulse_percent: float = Field(10.0, ge=0, le=100, description="ISD: max % of samples hit (P)")
    impulse_gain: float = Field(2.0, ge=0, description="ISD: impulsive noise gain relative to the sample (g_sd)")
    min_snr_db: float = Field(10.0, description="SSI: lowest signal-to-noise ratio in dB (SNRmin)")
    max_snr_db: float = Field(40.0, description="SSI: highest signal-to-noise ratio in dB (SNRmax)")

    @model_validator(mode="after")
    def _ranges_ordered(self) -> RawBoostConfig:
        for lo, hi in [("min_freq_hz", "max_freq_hz"), ("min_bandwidth_hz", "max_bandwidth_hz"),
                       ("min_fir_order", "max_fir_order"), ("min_gain_db", "max_gain_db"),
                       ("min_snr_db", "max_snr_db")]:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} ({getattr(self, lo)}) must not exceed {hi} ({getattr(self, hi)})")
        return self


def _norm_peak(y: np.ndarray) -> np.ndarray:
    """Scale down to peak 1 only when the peak exceeds 1 (the reference's normWav(x, 0))."""
    # Dividing only when peak > 1 also means a silent signal is never divided by zero.
    peak = np.max(np.abs(y))
    return y / peak if peak > 1.0 else y


def bandstop_firs(taps: np.ndarray, f1: np.ndarray, f2: np.ndarray, sr: int) -> np.ndarray:
    """Hamming-window band-stop FIRs (firwin's design, unscaled), one row per band, zero past taps[i]."""
    # One broadcast over all bands replaces ~25 firwin calls, which dominated the run time.
    c = taps[:, None]
    n = np.arange(int(taps.max()))[None, :]
    m = n - (c - 1) / 2
    lo, hi = (f1 / (sr / 2))[:, None], (f2 / (sr / 2))[:, None]
    h = np.sinc(m) - hi * np.sinc(hi * m) + lo * np.sinc(lo * m)
    h *= 0.54 - 0.46 * np.cos(2 * np.pi * n / (c - 1))
    # firwin's unit-DC scaling is skipped: each bank is peak-normalised afterwards, which cancels it.
    return np.where(n < c, h, 0.0)


def _notch_banks(rng: np.random.Generator, cfg: RawBoostConfig, sr: int, count: int) -> list[np.ndarray]:
    """`count` impulse responses, each a cascade of `num_bands` random band-stop FIRs (odd length)."""
    shape = (count, cfg.num_bands)
    fc = rng.uniform(cfg.min_freq_hz, cfg.max_freq_hz, shape).ravel()
    bw = rng.uniform(cfg.min_bandwidth_hz, cfg.max_bandwidth_hz, shape).ravel()
    # int(uniform) then forced odd, as the reference: a band-stop FIR needs an odd length.
    taps = np.floor(rng.uniform(cfg.min_fir_order, cfg.max_fir_order, shape)).astype(int).ravel() | 1
    nyq = sr / 2
    # Valid bands need 0 < f1 < f2 < nyquist; the reference clips at 1 mHz from the edges, and the
    # extra clips keep a low sample rate (maxF above Nyquist) from producing an inverted band.
    f1 = np.clip(fc - bw / 2, 1e-3, nyq - 2e-3)
    f2 = np.clip(fc + bw / 2, f1 + 1e-3, nyq - 1e-3)
    firs = bandstop_firs(taps, f1, f2, sr)
    banks = []
    for i in range(count):  # count * num_bands short convolutions, independent of signal length
        b = np.ones(1)
        for j in range(i * cfg.num_bands, (i + 1) * cfg.num_bands):
            b = np.convolve(b, firs[j, : taps[j]])
        banks.append(b)
    return banks


def _filter_bank_sum(
    signals: np.ndarray, rng: np.random.Generator, cfg: RawBoostConfig, sr: int, gains_db: np.ndarray
) -> np.ndarray:
    """Sum over rows of signals[i] filtered by a fresh notch bank scaled to peak |H| = gains_db[i]."""
    length = signals.shape[1]
    kernels = _notch_banks(rng, cfg, sr, len(gains_db))
    m = max(k.size for k in kernels)
    # All kernels are odd-length linear-phase, so centring them in a common length gives one
    # shared group delay and lets every order be summed in the frequency domain.
    bank = np.zeros((len(kernels), m))
    for i, k in enumerate(kernels):
        off = (m - k.size) // 2
        bank[i, off:off + k.size] = k
    # >= 4096 bins so the peak-gain normalisation is at least as fine as freqz's 512 points.
    nfft = sfft.next_fast_len(max(length + m - 1, 4096), real=True)
    # Single-precision FFTs: about twice as fast, and the output is float32 anyway.
    h = sfft.rfft(bank.astype(np.float32), nfft, axis=1)
    peak = np.max(np.abs(h), axis=1, keepdims=True)
    h *= ((10.0 ** (np.asarray(gains_db) / 20.0))[:, None] / np.where(peak > 0, peak, 1.0)).astype(np.float32)
    full = sfft.irfft(np.sum(h * sfft.rfft(signals.astype(np.float32), nfft, axis=1), axis=0), nfft)
    delay = (m - 1) // 2
    return full[delay:delay + length].astype(np.float64)


def lnl_convolutive(x: np.ndarray, rng: np.random.Generator, cfg: RawBoostConfig, sr: int) -> np.ndarray:
    """Algorithm 1: sum of x^(i+1) through random notch banks, mean-removed, peak-limited to 1."""
    orders = np.arange(1, cfg.num_orders + 1)
    u = rng.random(cfg.num_orders)
    # Higher orders are attenuated: [minG, maxG] shifted by [-minBias, -maxBias] dB (e.g. [-5, -20]).
    lo = np.where(orders == 1, cfg.min_gain_db, cfg.min_gain_db - cfg.min_nonlinear_bias_db)
    hi = np.where(orders == 1, cfg.max_gain_db, cfg.max_gain_db - cfg.max_nonlinear_bias_db)
    # Repeated products, not x ** k (pow() was the slowest step) nor cumprod on a strided view.
    powers = np.empty((cfg.num_orders, x.size), dtype=np.float32)
    powers[0] = x
    for k in range(1, cfg.num_orders):
        np.multiply(powers[k - 1], x, out=powers[k])
    y = _filter_bank_sum(powers, rng, cfg, sr, lo + (hi - lo) * u)
    return _norm_peak(y - y.mean())


def isd_impulsive(x: np.ndarray, rng: np.random.Generator, cfg: RawBoostConfig) -> np.ndarray:
    """Algorithm 2: up to P % of samples become x + g*x*(U(-1,1)*U(-1,1)); peak-limited to 1."""
    beta = rng.uniform(0.0, cfg.max_impulse_percent)
    n = int(x.size * beta / 100.0)
    idx = rng.choice(x.size, size=n, replace=False)
    f_r = (2.0 * rng.random(n) - 1.0) * (2.0 * rng.random(n) - 1.0)
    y = x.copy()
    y[idx] += cfg.impulse_gain * x[idx] * f_r
    return _norm_peak(y)


def ssi_additive(x: np.ndarray, rng: np.random.Generator, cfg: RawBoostConfig, sr: int) -> np.ndarray:
    """Algorithm 3: add notch-filtered Gaussian noise at an SNR drawn from [SNRmin, SNRmax] dB (no rescale)."""
    white = rng.standard_normal(x.size)
    # Bank gain is irrelevant here: the noise is rescaled to the drawn SNR below.
    noise = _filter_bank_sum(white[None, :], rng, cfg, sr, np.zeros(1))
    snr_db = rng.uniform(cfg.min_snr_db, cfg.max_snr_db)
    # The reference peak-normalises the noise first; that is a no-op under the energy scaling below.
    # Plain sums, not np.linalg.norm: BLAS threads stalled it ~10 ms per call on a busy machine.
    nn = np.sqrt(np.sum(noise * noise))
    scale = np.sqrt(np.sum(x * x)) / (10.0 ** (snr_db / 20.0)) / nn if nn > 0 else 0.0
    return x + scale * noise


def _check_algo(algo: int) -> int:
    if isinstance(algo, bool) or not isinstance(algo, (int, np.integer)) or int(algo) not in ALGOS:
        valid = ", ".join(f"{k} ({v})" for k, v in ALGOS.items())
        raise ValueError(f"unknown RawBoost algo {algo!r}; valid: {valid}")
    return int(algo)


def rawboost(
    wave: np.ndarray, algo: int, rng: np.random.Generator, sr: int = 16000, cfg: RawBoostConfig | None = None
) -> np.ndarray:
    """Apply RawBoost algorithm `algo` (0-8) to a 1-D waveform in about [-1, 1]; float32 out, same shape."""
    algo = _check_algo(algo)
    x = np.asarray(wave)
    if x.ndim != 1:
        raise ValueError(f"RawBoost expects a 1-D waveform, got shape {x.shape}")
    if x.size == 0:
        raise ValueError("RawBoost got an empty waveform")
    if not np.isfinite(x).all():
        raise ValueError("RawBoost got a waveform with NaN or infinite samples")
    if sr <= 0:
        raise ValueError(f"RawBoost needs a positive sample rate, got sr={sr}")
    if algo == 0:
        return x.astype(np.float32, copy=True)
    cfg = cfg or RawBoostConfig()
    x = x.astype(np.float64)
    if algo == 8:
        y = _norm_peak(lnl_convolutive(x, rng, cfg, sr) + isd_impulsive(x, rng, cfg))
    else:
        y = x
        for step in _SERIES[algo]:
            if step == 1:
                y = lnl_convolutive(y, rng, cfg, sr)
            elif step == 2:
                y = isd_impulsive(y, rng, cfg)
            else:
                y = ssi_additive(y, rng, cfg, sr)
    return y.astype(np.float32)


class RawBoost:
    """Picklable RawBoost transform for data loaders: `RawBoost(5)(wave, rng)`."""

    def __init__(self, algo: int, cfg: RawBoostConfig | None = None, sr: int = 16000) -> None:
        """Fix the algorithm, recipe and sample rate."""
        self.algo = _check_algo(algo)
        self.cfg = cfg or RawBoostConfig()
        self.sr = sr

    @classmethod
    def from_config(cls, cfg: RawBoostConfig, sr: int = 16000) -> RawBoost:
        """Build from a config, taking the algorithm from `cfg.algo`."""
        return cls(cfg.algo, cfg, sr)

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one waveform with randomness drawn only from `rng`."""
        return rawboost(wave, self.algo, rng, self.sr, self.cfg)

    def __repr__(self) -> str:
        return f"RawBoost(algo={self.algo}, sr={self.sr})"

"""Small deterministic synthetic speech-deepfake corpus for quickstarts and tests.

Each spoofing attack is a domain: a synthesis pipeline with its own artifact.  Bona fide
speech comes from a source-filter model; every spoof starts from the same generator of
F0/formant/segment trajectories and is re-synthesised by its attack, so a detector must
learn artifacts, not content.  Held-out attacks leave artifacts in parts of the signal
the seen ones do not touch, which makes them harder to detect.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import signal
from scipy.ndimage import uniform_filter1d
from tqdm import tqdm

from metadg.tasks.audio.generated import cache_path, cached_split, child_rng

__all__ = ["SAMPLE_RATE", "SEEN_ATTACKS", "UNSEEN_ATTACKS", "ALL_ATTACKS", "BONAFIDE", "SPLITS", "GENERATOR_VERSION",
           "SyntheticSplit", "synthesize_bonafide", "synthesize_spoof", "generate_split", "load_split"]

SAMPLE_RATE: int = 16000
SEEN_ATTACKS: tuple[str, ...] = ("griffin_lim", "lpc_vocoder", "concat", "smooth_envelope")
UNSEEN_ATTACKS: tuple[str, ...] = ("codec", "neural_like")
ALL_ATTACKS: tuple[str, ...] = SEEN_ATTACKS + UNSEEN_ATTACKS
BONAFIDE: str = "-"
SPLITS: tuple[str, ...] = ("train", "dev", "eval")
# Bump whenever the generated signals change, so stale caches are not reused.
GENERATOR_VERSION: int = 1

_N_FFT = 512
_HOP = 256  # 50 % overlap halves the FFT work, which dominates generation time
_PAD = _N_FFT - _HOP  # full window-overlap coverage from the first real sample
_WIN = np.sin(np.pi * np.arange(_N_FFT) / _N_FFT)  # sqrt of periodic Hann: WOLA-exact at 50 %
_WOLA = float(np.sum(_WIN**2) / _HOP)
# Fixed pool size so that an utterance's speaker does not depend on the split size.
_N_SPEAKERS = 24
# F1..F4 targets (Hz) of adult male vowels /a i u e o @ ae/ (Peterson & Barney-like).
_VOWELS = np.array([[730, 1090, 2440, 3400], [270, 2290, 3010, 3700], [300, 870, 2240, 3300],
                    [530, 1840, 2480, 3500], [570, 840, 2410, 3300], [520, 1190, 2390, 3400],
                    [660, 1720, 2410, 3400]], dtype=np.float64)
_BANDWIDTHS = np.array([60.0, 90.0, 130.0, 180.0, 250.0])


@dataclass(frozen=True)
class SyntheticSplit:
    """One generated split: waveforms plus ASVspoof-style protocol columns."""

    ids: list[str]
    waves: np.ndarray
    labels: np.ndarray
    attacks: list[str]
    speakers: list[str]


@dataclass(frozen=True)
class _Speaker:
    f0: float
    vtl: float
    breath: float
    jitter: float
    shimmer: float
    bw: float
    open_q: float


@dataclass(frozen=True)
class _Plan:
    f0: np.ndarray
    voiced: np.ndarray
    unvoiced: np.ndarray
    formants: np.ndarray
    fric_fc: float


# ----------------------------------------------------------------------------- STFT
def _stft(x: np.ndarray) -> np.ndarray:
    """Zero-padded, windowed frames of x as a (frames, bins) complex spectrogram."""
    n_frames = _n_frames(len(x))
    right = (n_frames - 1) * _HOP + _N_FFT - len(x) - _PAD
    xp = np.pad(x, (_PAD, right))
    return np.fft.rfft(sliding_window_view(xp, _N_FFT)[::_HOP] * _WIN, axis=-1)


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    """Weighted overlap-add inverse of _stft, trimmed to n samples."""
    frames = np.fft.irfft(spec, n=_N_FFT, axis=-1) * _WIN
    q = _N_FFT // _HOP
    out = np.zeros((len(frames) + q - 1, _HOP))
    for j in range(q):  # hop divides n_fft, so q strided adds replace a per-frame loop
        out[j:j + len(frames)] += frames[:, j * _HOP:(j + 1) * _HOP]
    return out.ravel()[_PAD:_PAD + n] / _WOLA


def _n_frames(n: int) -> int:
    """Number of _stft frames for an n-sample signal."""
    return 2 + -(-(n + 2 * _PAD - _N_FFT) // _HOP)


def _rms(x: np.ndarray) -> float:
    """Root mean square, never zero (silent inputs must not divide by zero)."""
    return float(np.sqrt(np.mean(x * x)) + 1e-12)


# ------------------------------------------------------------------------ bona fide
def _draw_speaker(rng: np.random.Generator) -> _Speaker:
    """Random speaker: F0 range and vocal tract length depend on a coarse sex draw."""
    female = rng.random() < 0.5
    return _Speaker(
        f0=rng.uniform(160, 250) if female else rng.uniform(80, 150),
        vtl=rng.uniform(1.1, 1.25) if female else rng.uniform(0.9, 1.05),
        breath=rng.uniform(0.02, 0.15),
        jitter=rng.uniform(0.005, 0.015),
        shimmer=rng.uniform(0.02, 0.06),
        bw=rng.uniform(0.8, 1.4),
        open_q=rng.uniform(0.35, 0.5),
    )


def _draw_plan(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> _Plan:
    """Draws segment, F0 and formant trajectories of one utterance."""
    bounds = [0]
    while bounds[-1] < n:
        bounds.append(bounds[-1] + max(1, int(rng.uniform(0.08, 0.25) * sr)))
    bounds[-1] = n
    kinds = rng.choice(3, size=len(bounds) - 1, p=[0.7, 0.2, 0.1])  # voiced/fricative/pause
    if not np.any(kinds == 0):
        kinds[0] = 0  # an utterance without voicing would not be speech-like
    voiced, unvoiced = np.zeros(n), np.zeros(n)
    for a, b, kind in zip(bounds[:-1], bounds[1:], kinds):
        gain, ramp = rng.uniform(0.4, 1.0), min(int(rng.uniform(0.01, 0.03) * sr), (b - a) // 2)
        if kind == 2:
            continue  # pause
        env = voiced if kind == 0 else unvoiced
        env[a:b] = gain
        if ramp > 0:  # raised-cosine onset and offset
            rise = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
            env[a:a + ramp] *= rise
            env[b - ramp:b] *= rise[::-1]

    t = np.arange(n) / sr
    dur = max(n / sr, 1e-3)
    ctrl = np.linspace(0.0, dur, int(dur / 0.1) + 2)
    drift = np.cumsum(rng.normal(0.0, 0.04, len(ctrl)))
    octaves = np.interp(t, ctrl, drift - drift.mean()) - rng.uniform(0.1, 0.3) * t / dur
    f0 = np.clip(spk.f0 * np.exp(np.log(2.0) * octaves), 60.0, 400.0)

    centres = (np.asarray(bounds[:-1]) + np.asarray(bounds[1:])) / (2 * sr)
    targets = _VOWELS[rng.integers(len(_VOWELS), size=len(centres))]
    targets = targets * spk.vtl * (1 + 0.03 * rng.standard_normal(targets.shape))
    frame_t = (np.arange(_n_frames(n)) * _HOP + _N_FFT / 2 - _PAD) / sr
    formants = np.stack([np.interp(frame_t, centres, targets[:, k]) for k in range(4)]
                        + [np.full(len(frame_t), 4500.0 * spk.vtl)], axis=1)
    formants = np.minimum(formants, 0.45 * sr)
    return _Plan(f0, voiced, unvoiced, formants, fric_fc=min(rng.uniform(2500, 5500), 0.4 * sr))


def _pulse_times(f0: np.ndarray, sr: int) -> np.ndarray:
    """Fractional sample times at which the integrated F0 phase crosses an integer."""
    phase = np.cumsum(f0) / sr
    whole = np.floor(phase)
    idx = np.flatnonzero(np.diff(whole)) + 1
    return idx - (phase[idx] - whole[idx]) * sr / f0[idx]


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance white noise; uniform is spectrally identical and ~4x cheaper than normal."""
    return (rng.random(n) - 0.5) * np.sqrt(12.0)


def _glottal_source(rng: np.random.Generator, spk: _Speaker, f0: np.ndarray, sr: int) -> np.ndarray:
    """Rosenberg flow-derivative pulse train with jitter and shimmer, unit RMS."""
    n = len(f0)
    times = _pulse_times(f0, sr)
    if len(times) > 1:
        periods = np.diff(times) * (1 + spk.jitter * rng.standard_normal(len(times) - 1))
        times = times[0] + np.concatenate([[0.0], np.cumsum(periods)])
    amps = 1 + spk.shimmer * rng.standard_normal(len(times))
    t0 = sr / float(np.median(f0))
    tp, tn = spk.open_q * t0, 0.4 * spk.open_q * t0
    # The analytic pulse is tabulated finely and looked up at exact fractional offsets,
    # so sub-sample jitter survives sampling.
    grid = np.linspace(0.0, tp + tn, 256)
    table = np.where(grid < tp, np.pi / (2 * tp) * np.sin(np.pi * grid / tp),
                     -np.pi / (2 * tn) * np.sin(0.5 * np.pi * (grid - tp) / tn))
    idx = np.ceil(times)[:, None].astype(np.int64) + np.arange(int(tp + tn) + 1)
    wave = np.interp(idx - times[:, None], grid, table, left=0.0, right=0.0) * amps[:, None]
    keep = (idx >= 0) & (idx < n)
    src = np.bincount(idx[keep], wave[keep], minlength=n)
    return src / _rms(src)


def _formant_filter(x: np.ndarray, formants: np.ndarray, sr: int, bw_scale: float) -> np.ndarray:
    """Time-varying cascade of 2-pole resonators, applied frame-wise in the STFT domain."""
    # Frame-wise multiplication keeps the time-varying filter vectorised; resonator
    # impulse responses decay well within one 32 ms window, so wrap-around is negligible.
    r = np.exp(-np.pi * _BANDWIDTHS * bw_scale / sr)
    den = np.ones((len(formants), 1))
    gain = np.ones(len(formants))
    for k in range(formants.shape[1]):
        c = 2 * r[k] * np.cos(2 * np.pi * formants[:, k] / sr)
        gain *= 1 - c + r[k] ** 2  # unit DC gain per resonator
        nxt = np.zeros((len(den), den.shape[1] + 2))
        nxt[:, :-2] += den
        nxt[:, 1:-1] -= c[:, None] * den
        nxt[:, 2:] += r[k] ** 2 * den
        den = nxt
    return _istft(_stft(x) * gain[:, None] / np.fft.rfft(den, n=_N_FFT, axis=-1), len(x))


def _render(rng: np.random.Generator, spk: _Speaker, plan: _Plan, sr: int) -> np.ndarray:
    """Clean (noise-free, unnormalised) waveform of a plan."""
    n = len(plan.f0)
    # Voiced and frication segments are disjoint, so both can share one noise draw.
    noise = _noise(rng, n)
    exc = plan.voiced * (_glottal_source(rng, spk, plan.f0, sr) + spk.breath * noise)
    voiced = _formant_filter(exc, plan.formants, sr, spk.bw)
    voiced /= _rms(voiced[plan.voiced > 0.1]) if np.any(plan.voiced > 0.1) else _rms(voiced)
    rad = np.exp(-np.pi * 0.8 * plan.fric_fc / sr)  # broad band-pass with zeros at 0 and fs/2
    ar = [1.0, -2 * rad * np.cos(2 * np.pi * plan.fric_fc / sr), rad * rad]
    fric = signal.lfilter([1.0, 0.0, -1.0], ar, noise)
    return voiced + rng.uniform(0.1, 0.3) * plan.unvoiced * fric / _rms(fric)


def _finish(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Adds the room noise floor and a random level, identically for every class."""
    floor = signal.lfilter([1.0], [1.0, -0.7], _noise(rng, len(x)))  # rooms are rarely white
    y = x + floor * (_rms(x) * 10 ** (rng.uniform(-50, -40) / 20) / _rms(floor))
    y *= 10 ** (rng.uniform(-26, -16) / 20) / _rms(y)  # loudness must not be a cue
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0.99:
        y *= 0.99 / peak
    return y.astype(np.float32)


def _clean_bonafide(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> tuple[np.ndarray, _Plan]:
    """Draws a plan and renders it."""
    plan = _draw_plan(rng, spk, n, sr)
    return _render(rng, spk, plan, sr), plan


# -------------------------------------------------------------------------- attacks
@functools.lru_cache(maxsize=4)
def _mel_bank(sr: int, n_mels: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Triangular mel filterbank (n_mels, bins) and its per-bin normalised pseudo-inverse."""
    mel = 2595 * np.log10(1 + sr / 2 / 700)
    edges = 700 * (10 ** (np.linspace(0, mel, n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(_N_FFT, 1 / sr)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    return bank, bank / (bank.sum(axis=0) + 1e-12)


def _griffin_lim(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Tacotron-style: mel magnitude, naive inversion, few Griffin-Lim iterations (phasiness)."""
    x, _ = _clean_bonafide(rng, spk, n, sr)
    bank, back = _mel_bank(sr)
    # einsum rather than matmul: tiny BLAS calls stall badly when cores are contended.
    mag = np.einsum("fm,mk->fk", np.einsum("fk,mk->fm", np.abs(_stft(x)), bank), back)
    phase = 2 * np.pi * rng.random(mag.shape)
    spec = np.empty(mag.shape, dtype=np.complex128)
    spec.real, spec.imag = mag * np.cos(phase), mag * np.sin(phase)
    for _ in range(int(rng.integers(1, 4))):
        rebuilt = _stft(_istft(spec, n))
        spec = mag * rebuilt / (np.abs(rebuilt) + 1e-12)
    return _istft(spec, n)


def _levinson(r: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Levinson-Durbin over rows of autocorrelations; returns (A coefficients, error)."""
    a = np.zeros((r.shape[0], order + 1))
    a[:, 0] = 1.0
    err = r[:, 0].copy()
    for i in range(1, order + 1):
        k = -(r[:, i] + np.sum(a[:, 1:i] * r[:, i - 1:0:-1], axis=1)) / err
        a[:, 1:i + 1] = a[:, 1:i + 1] + k[:, None] * a[:, i - 1::-1]
        err *= 1 - k * k
    return a, err


def _lpc_vocoder(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Frame-wise LPC resynthesis from a perfectly regular impulse train or noise."""
    x, plan = _clean_bonafide(rng, spk, n, sr)
    spec = _stft(x)
    r = np.fft.irfft(np.abs(spec) ** 2, axis=-1)[:, :19]
    r[:, 0] = r[:, 0] * 1.001 + 1e-9  # white-noise correction keeps silent frames stable
    a, err = _levinson(r, 18)
    where = np.clip(np.round(_pulse_times(plan.f0, sr)).astype(np.int64), 0, n - 1)
    pulses = np.zeros(n)
    pulses[where] = np.sqrt(sr / plan.f0[where])  # regular bare impulses, unit power: buzzy
    voicing = uniform_filter1d((plan.voiced > 0.05).astype(float), int(0.01 * sr) + 1)
    exc = voicing * pulses + (1 - voicing) * _noise(rng, n)
    gain = np.sqrt(err / np.sum(_WIN**2))[:, None]  # flat unit-power excitation -> |X|^2
    return _istft(_stft(exc) * gain / np.fft.rfft(a, n=_N_FFT, axis=-1), n)


def _concat(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Unit selection: hard splices of units drawn from two utterances of one speaker."""
    half = max(1, n // 2)
    units = [_clean_bonafide(rng, spk, half, sr)[0] for _ in range(2)]
    database = np.concatenate([u * 10 ** (rng.uniform(-3, 3) / 20) / _rms(u) for u in units])
    out = np.empty(n)
    start = 0
    while start < n:  # one iteration per unit (~60-200 ms), not per sample
        length = min(n - start, max(1, int(rng.uniform(0.06, 0.2) * sr)), len(database))
        src = int(rng.integers(len(database) - length + 1))
        out[start:start + length] = database[src:src + length]
        start += length
    return out


def _smooth_envelope(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Statistical-parametric style over-smoothing of the spectral envelope."""
    x, _ = _clean_bonafide(rng, spk, n, sr)
    spec = _stft(x)
    logmag = np.log(np.abs(spec) + 1e-4 * np.max(np.abs(spec)) + 1e-12)
    ceps = np.fft.irfft(logmag, axis=-1)
    quefrency = np.minimum(np.arange(_N_FFT), _N_FFT - np.arange(_N_FFT))
    # 40 coefficients keep the formants (the rest of logmag is harmonic fine structure);
    # 7-10 coefficients plus ~100 ms temporal averaging is the over-smoothed envelope.
    envelope, coarse = (np.fft.rfft(ceps * (quefrency < keep), axis=-1).real for keep in (40, rng.integers(7, 11)))
    smoothed = uniform_filter1d(coarse, 7, axis=0, mode="nearest")
    # Reusing the unit phasor avoids a (slow) complex exponential.
    return _istft(np.exp(logmag - envelope + smoothed) * spec / (np.abs(spec) + 1e-12), n)


def _codec(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Narrow-band telephone channel: 8 kHz resampling and 8-bit mu-law."""
    x, _ = _clean_bonafide(rng, spk, n, sr)
    up, down = 8000 // np.gcd(8000, sr), sr // np.gcd(8000, sr)
    nb = signal.resample_poly(x, up, down)
    nb *= rng.uniform(0.3, 0.9) / (np.max(np.abs(nb)) + 1e-12)  # codec input level varies
    mu = np.round(127 * np.sign(nb) * np.log1p(255 * np.abs(nb)) / np.log1p(255)) / 127
    nb = np.sign(mu) * np.expm1(np.abs(mu) * np.log1p(255)) / 255
    return signal.resample_poly(nb, down, up)[:n]


def _neural_like(rng: np.random.Generator, spk: _Speaker, n: int, sr: int) -> np.ndarray:
    """Perfect harmonics, plus a stride-4 upsampler's periodic gain (spectral images) and bias tone."""
    x, _ = _clean_bonafide(rng, spk, n, sr)
    k = np.arange(n)
    # (-1)^k mirrors the spectrum about fs/2 and cos(pi k / 2) shifts it by fs/4:
    # the images a transposed convolution with stride 4 leaves behind.
    gain = 1 + rng.uniform(0.02, 0.05) * (np.cos(np.pi * k) + 0.5 * np.cos(0.5 * np.pi * k + rng.uniform(0, 2 * np.pi)))
    tone = np.cos(0.5 * np.pi * k + rng.uniform(0, 2 * np.pi))  # constant fs/4 checkerboard tone
    return x * gain + 10 ** (rng.uniform(-45, -38) / 20) * _rms(x) * tone


_ATTACKS: dict[str, Callable[[np.random.Generator, _Speaker, int, int], np.ndarray]] = {
    "griffin_lim": _griffin_lim, "lpc_vocoder": _lpc_vocoder, "concat": _concat,
    "smooth_envelope": _smooth_envelope, "codec": _codec, "neural_like": _neural_like,
}


# ----------------------------------------------------------------------- public API
def _check_attack(attack: str) -> None:
    """Raises ValueError for an attack name that is not in ALL_ATTACKS."""
    if attack not in _ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; valid attacks: {', '.join(ALL_ATTACKS)}")


def synthesize_bonafide(rng: np.random.Generator, n_samples: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One bona fide utterance of a random speaker as float32 in [-1, 1]."""
    return _synthesize(BONAFIDE, rng, None, n_samples, sr)


def synthesize_spoof(attack: str, rng: np.random.Generator, n_samples: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One spoofed utterance of a random speaker produced by the named attack."""
    _check_attack(attack)
    return _synthesize(attack, rng, None, n_samples, sr)


def _synthesize(attack: str, rng: np.random.Generator, spk: _Speaker | None, n: int, sr: int) -> np.ndarray:
    """Finished utterance of one class (BONAFIDE or an attack); a random speaker if spk is None."""
    if int(n) < 1:
        raise ValueError(f"n_samples must be at least 1, got {n}")
    spk, n = spk or _draw_speaker(rng), int(n)
    clean = _clean_bonafide(rng, spk, n, sr)[0] if attack == BONAFIDE else _ATTACKS[attack](rng, spk, n, sr)
    return _finish(rng, clean)


def _resolve(split: str, seed: int, n_bonafide: int, n_per_attack: int, duration_s: float,
             attacks: Sequence[str] | None) -> tuple[str, ...]:
    """Validates generate_split arguments; returns the attack tuple to use."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    if isinstance(attacks, str):
        raise ValueError("attacks must be a sequence of attack names, not a string")
    resolved = tuple(attacks) if attacks is not None else (ALL_ATTACKS if split == "eval" else SEEN_ATTACKS)
    for attack in resolved:
        _check_attack(attack)
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"duplicate attacks in {resolved}")
    if int(seed) < 0 or int(n_bonafide) < 0 or int(n_per_attack) < 0:
        raise ValueError("seed, n_bonafide and n_per_attack must be non-negative")
    if not (duration_s > 0 and round(duration_s * SAMPLE_RATE) >= 1):
        raise ValueError(f"duration_s must give at least one sample, got {duration_s}")
    return resolved


def generate_split(split: str, *, seed: int = 0, n_bonafide: int, n_per_attack: int,
                   duration_s: float = 1.0, attacks: Sequence[str] | None = None) -> SyntheticSplit:
    """Generates a split deterministically from (seed, split); splits are disjoint draws."""
    attacks = _resolve(split, seed, n_bonafide, n_per_attack, duration_s, attacks)
    root = np.random.SeedSequence([int(seed), SPLITS.index(split)])
    speakers = [_draw_speaker(child_rng(root, 0, s)) for s in range(_N_SPEAKERS)]
    n = int(round(duration_s * SAMPLE_RATE))
    # Class code (0 = speakers, 1 = bona fide, 2+ = index in ALL_ATTACKS) keys the
    # per-utterance streams, so utterance i never depends on the other class sizes.
    jobs = [(BONAFIDE, 1, i) for i in range(int(n_bonafide))]
    jobs += [(a, 2 + ALL_ATTACKS.index(a), i) for a in attacks for i in range(int(n_per_attack))]
    waves = np.empty((len(jobs), n), dtype=np.float32)
    spk_names = []
    for row, (attack, code, i) in enumerate(tqdm(jobs, desc=f"synthetic {split}", disable=None, leave=False)):
        rng = child_rng(root, code, i)
        s = int(rng.integers(_N_SPEAKERS))
        spk_names.append(f"SYN_{split}_spk{s:03d}")
        waves[row] = _synthesize(attack, rng, speakers[s], n, SAMPLE_RATE)
    return SyntheticSplit(
        ids=[f"SYN_{split}_{k:06d}" for k in range(len(jobs))],
        waves=waves,
        labels=np.array([1 if a == BONAFIDE else 0 for a, _, _ in jobs], dtype=np.int64),
        attacks=[a for a, _, _ in jobs],
        speakers=spk_names,
    )


def load_split(split: str, *, cache_dir: str | Path, seed: int = 0, n_bonafide: int, n_per_attack: int,
               duration_s: float = 1.0, attacks: Sequence[str] | None = None) -> SyntheticSplit:
    """generate_split cached as an .npz keyed by a hash of all arguments."""
    attacks = _resolve(split, seed, n_bonafide, n_per_attack, duration_s, attacks)
    key = {"split": split, "seed": int(seed), "n_bonafide": int(n_bonafide), "n_per_attack": int(n_per_attack),
           "duration_s": float(duration_s), "attacks": list(attacks), "sr": SAMPLE_RATE, "version": GENERATOR_VERSION}

    def make() -> dict[str, np.ndarray]:
        data = generate_split(split, seed=seed, n_bonafide=n_bonafide, n_per_attack=n_per_attack,
                              duration_s=duration_s, attacks=attacks)
        return {"waves": data.waves, "labels": data.labels, **{k: np.array(getattr(data, k), dtype=str) for k in _COLUMNS}}

    arrays = cached_split(cache_path(cache_dir, f"synthetic_{split}", key), make,
                          int(n_bonafide) + int(n_per_attack) * len(attacks), int(round(duration_s * SAMPLE_RATE)),
                          "synthetic")
    return SyntheticSplit(waves=arrays["waves"], labels=arrays["labels"], **{k: arrays[k].tolist() for k in _COLUMNS})


_COLUMNS = ("ids", "attacks", "speakers")
